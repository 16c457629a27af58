"""Multi-device placement on JAX's SPMD partitioner: one table of logical axes, mapped onto a (data, model) mesh.

Parameters get tensor parallelism over ``model`` (attention heads, KV heads, MLP width, vocabulary); the batch and
the KV cache's rows go over ``data``. XLA inserts every collective; jaxgen writes no communication.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgen.config import ModelConfig

DATA, MODEL = "data", "model"

# Parameter name pattern -> logical axis of each dimension (the one declarative table of the placement).
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"model\.embed_tokens\.embedding", ("vocab", "embed")),
    (r"model\.embed_positions\.embedding", (None, "embed")),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r".*self_attn\.q_proj\.kernel", ("embed", "heads")),
    (r".*self_attn\.[kv]_proj\.kernel", ("embed", "kv_heads")),
    (r".*self_attn\.q_proj\.bias", ("heads",)),
    (r".*self_attn\.[kv]_proj\.bias", ("kv_heads",)),
    (r".*self_attn\.o_proj\.kernel", ("heads", "embed")),
    (r".*(self_attn\.o_proj|mlp\.down_proj)\.bias", ("embed",)),
    (r".*mlp\.(gate|up)_proj\.kernel", ("embed", "mlp")),
    (r".*mlp\.(gate|up)_proj\.bias", ("mlp",)),
    (r".*mlp\.down_proj\.kernel", ("mlp", "embed")),
    (r".*norm(_\d)?\.(weight|bias)", (None,)),  # Gemma 4 MoE: post_feedforward_layernorm_1, ...
    # Gemma 4 per-layer inputs and layer scalars
    (r"model\.embed_tokens_per_layer\.embedding", (None, None)),
    (r"model\.per_layer_model_projection\.kernel", ("embed", None)),
    (r".*per_layer_input_gate\.kernel", ("embed", None)),
    (r".*per_layer_projection\.kernel", (None, "embed")),
    (r".*layer_scalar", (None,)),
    # MoE (jaxgen.nn.moe): stacked experts over `model` when it divides their count, else their inner width.
    # Gemma 4 keeps its routed experts in `moe`, beside the dense `mlp`.
    (r".*(mlp|moe)\.experts\.(gate|up)_proj", ("experts", "embed", "expert_mlp")),
    (r".*(mlp|moe)\.experts\.down_proj", ("experts", "expert_mlp", "embed")),
    (r".*(mlp|moe)\.(gate|shared_expert_gate)\.kernel", ("embed", None)),
    (r".*moe\.(router_scale|per_expert_scale)", (None,)),
    (r".*mlp\.shared_expert\.(gate|up)_proj\.kernel", ("embed", "expert_mlp")),
    (r".*mlp\.shared_expert\.down_proj\.kernel", ("expert_mlp", "embed")),
    (r".*mlp\.gate\.e_score_correction_bias", (None,)),
    (r".*mlp\.gate\.bias", (None,)),  # gpt-oss router bias
    (r".*mlp\.experts\.(gate|up)_proj_bias", ("experts", "expert_mlp")),
    (r".*mlp\.experts\.down_proj_bias", ("experts", None)),
    (r".*self_attn\.sinks", ("heads",)),
    (r".*mlp\.shared_experts\.(gate|up)_proj\.kernel", ("embed", "expert_mlp")),
    (r".*mlp\.shared_experts\.down_proj\.kernel", ("expert_mlp", "embed")),
    # DeepSeek-V3 latent attention: the low-rank inputs replicated, the per-head expansions split by head.
    (r".*self_attn\.(q_a_proj|kv_a_proj_with_mqa)\.kernel", ("embed", None)),
    (r".*self_attn\.(q_a_proj|kv_a_proj_with_mqa)\.bias", (None,)),
    (r".*self_attn\.(q_b_proj|kv_b_proj)\.kernel", (None, "heads")),
    # Qwen3.5 Gated DeltaNet: replicated (in_proj_qkv's channels are [q | k | v] fused and conv'd together).
    (r".*linear_attn\.in_proj_\w+\.kernel", ("embed", None)),
    (r".*linear_attn\.out_proj\.kernel", (None, "embed")),
    (r".*linear_attn\.conv1d\.weight", (None, None, None)),
    (r".*linear_attn\.(dt_bias|A_log)", (None,)),
)
# Logical axis -> mesh axis (None = replicated).
MESH_AXES: dict[str, str | None] = {
    "batch": DATA, "vocab": MODEL, "heads": MODEL, "kv_heads": MODEL, "mlp": MODEL, "embed": None,
}
# Axes that are replicated when the model axis does not divide them ("too small to split"); the others must divide.
REPLICATE_IF_INDIVISIBLE = ("kv_heads", "vocab")


def make_mesh(data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` device mesh over the first ``data * model`` devices."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1 or data * model > len(devices):
        raise ValueError(f"mesh (data={data}, model={model}) needs {data * model} devices; {len(devices)} available.")
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def logical_sizes(config: ModelConfig) -> dict[str, int]:
    """How many indivisible units each logical axis has (heads, not heads * head_dim)."""
    # Layers may differ (Gemma 4's global layers have their own KV heads, its KV-sharing layers a double-wide MLP):
    # a mesh axis splits an axis in every layer exactly when it divides the gcd of the layers' sizes.
    n = range(config.num_hidden_layers)
    kv = math.gcd(*(config.layer_kv_heads(i) for i in n)) if config.layers else config.num_key_value_heads
    mlp = math.gcd(config.intermediate_size, *(s.intermediate_size or config.intermediate_size for s in config.layers))
    return {"heads": config.num_attention_heads, "kv_heads": kv, "mlp": mlp, "vocab": config.vocab_size}


def resolve_axes(config: ModelConfig, mesh: Mesh) -> dict[str, str | None]:
    """The logical -> mesh mapping for this model and mesh, after divisibility checks.

    Raises ValueError naming the dimension and the model-axis sizes that would work.
    """
    m = mesh.shape[MODEL]
    rules = dict(MESH_AXES)
    for axis, size in logical_sizes(config).items():
        if size % m == 0:
            continue
        if axis in REPLICATE_IF_INDIVISIBLE:
            rules[axis] = None
            continue
        field = {"heads": "num_attention_heads", "mlp": "intermediate_size"}[axis]
        ok = [d for d in _divisors(config.num_attention_heads) if config.intermediate_size % d == 0]
        raise ValueError(f"mesh axis '{MODEL}' has size {m}, which does not divide {field}={size}; "
                         f"model-axis sizes that work for this model: {ok}.")
    return _moe_axes(config, m, rules)


def _moe_axes(config: ModelConfig, m: int, rules: dict[str, str | None]) -> dict[str, str | None]:
    """Experts over ``model`` when it divides every MoE layer's expert count; else the experts' (and shared
    expert's) inner width where that divides; else replicated."""
    specs = [s.moe for s in config.layers if s.moe is not None]
    by_expert = bool(specs) and all(s.num_experts % m == 0 for s in specs)
    inner = all(s.intermediate_size % m == 0 and s.shared_intermediate_size % m == 0 for s in specs)
    return {**rules, "experts": MODEL if by_expert else None,
            "expert_mlp": MODEL if not by_expert and inner else None}


def param_spec(name: str, ndim: int, rules: dict[str, str | None]) -> PartitionSpec:
    if name.startswith("vision."):  # image encoders (a few hundred M parameters at most) run replicated
        return PartitionSpec()
    for pattern, axes in PARAM_AXES:
        if re.fullmatch(pattern, name):
            assert len(axes) == ndim, (name, axes)
            return PartitionSpec(*(rules.get(a) if a else None for a in axes))
    raise KeyError(f"no sharding rule for parameter {name}; add it to jaxgen.parallel.sharding.PARAM_AXES.")


def param_shardings(config: ModelConfig, mesh: Mesh, shapes: dict[str, tuple[int, ...]]) -> dict[str, NamedSharding]:
    """``{parameter name: NamedSharding}`` for every parameter in ``shapes``."""
    rules = resolve_axes(config, mesh)
    return {name: NamedSharding(mesh, param_spec(name, len(shape), rules)) for name, shape in shapes.items()}


def cache_sharding(config: ModelConfig, mesh: Mesh):
    """Shardings of a :class:`jaxgen.cache.KVCache`: rows over data, KV heads over model (when divisible)."""
    from jaxgen.cache import KVCache

    rules = resolve_axes(config, mesh)
    kv = NamedSharding(mesh, PartitionSpec(DATA, rules["kv_heads"], None, None))
    latent = NamedSharding(mesh, PartitionSpec(DATA, None, None, None))  # MLA: one "head" of latents, replicated
    linear = [spec.linear for spec in config.layers]
    kvs = tuple(None if lin or spec.attention.kv_source is not None else  # KV sharing: no own entry
                latent if spec.attention.mla is not None else kv for lin, spec in zip(linear, config.layers))
    cache = KVCache(keys=kvs, values=kvs, valid=NamedSharding(mesh, PartitionSpec(DATA, None)),
                    index=NamedSharding(mesh, PartitionSpec()))
    if not any(linear):
        return cache
    # Linear-attention states: rows over data; recurrent value heads over model when divisible. The conv state's
    # channels are [q | k | v] concatenated, so a head split would not line up with them: replicated.
    m = mesh.shape[MODEL]
    conv = tuple(lin and NamedSharding(mesh, PartitionSpec(DATA, None, None)) for lin in linear)
    rec = tuple(lin and NamedSharding(mesh, PartitionSpec(DATA, MODEL if lin.num_v_heads % m == 0 else None,
                                                          None, None)) for lin in linear)
    return cache.replace(conv=conv, recurrent=rec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))

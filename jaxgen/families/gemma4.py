"""Gemma 4 text (``gemma4_text``, transformers' ``Gemma4ForCausalLM``).

Gemma 3's sandwich decoder with: plain ``w * normalize(x)`` RMSNorms in float32 (``rms_f32``), q/k norms and a
scale-free v-norm, attention scale 1, per-layer sizes for the global layers (``per_layer_config``, or 4.x-style
``global_head_dim`` / ``num_global_key_value_heads``), proportional partial RoPE on global layers, optional
``attention_k_eq_v`` (global layers use k_proj's output as values), KV sharing (the last
``num_kv_shared_layers`` layers read the keys/values of the last earlier layer of their type), per-layer inputs
(a second embedding table plus a projection of the embeddings, fed into every layer after its MLP), a learned
scalar per layer and an optional double-wide MLP in KV-sharing layers. With ``enable_moe_block`` (the 26B-A4B
model) every layer also runs routed experts beside its dense MLP (``dense+moe``: the router reads the residual
stream, the experts their own pre-norm, and each branch has its own post-norm before the two are summed).
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.config import (AttentionSpec, LayerSpec, ModelConfig, MoESpec, NormSpec, RopeConfig, _bool, _eos_ids,
                           _layer_types, _optional_int, _require, _token_id)
from jaxgen.errors import ConfigError
from jaxgen.families._common import activation, attention_sizes, dtype_name, positive, reject

_LAYER_TYPES = ("full_attention", "sliding_attention")
_DEFAULT_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                 "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                    "rope_theta": 1_000_000.0}}


def _rope(params: Mapping, kind: str, source: str) -> RopeConfig:
    rope_type = params.get("rope_type", "default")
    if rope_type not in ("default", "proportional"):
        raise ConfigError(f"{source}: rope_parameters.{kind}.rope_type {rope_type!r} is not supported for "
                          "gemma4_text (only 'default' and 'proportional').")
    theta = positive(params, "rope_theta", source, None)
    if theta is None:
        raise ConfigError(f"{source}: rope_parameters.{kind} needs 'rope_theta'.")
    partial = positive(params, "partial_rotary_factor", source, 1.0)
    if rope_type == "default" and partial != 1.0:
        raise ConfigError(f"{source}: rope_parameters.{kind}: partial_rotary_factor={partial} needs rope_type "
                          "'proportional'.")
    return RopeConfig(rope_type=rope_type, theta=theta, factor=positive(params, "factor", source, None),
                      partial_rotary_factor=partial)


def _layer_sizes(raw: dict, kinds: tuple[str, ...], head_dim: int, kv_heads: int,
                 source: str) -> list[tuple[int, int]]:
    """(head_dim, num_kv_heads) per layer, from ``per_layer_config`` (what transformers 5 saves) or from
    ``global_head_dim`` / ``num_global_key_value_heads`` (its constructor arguments)."""
    sizes = [(head_dim, kv_heads)] * len(kinds)
    per_layer = raw.get("per_layer_config")
    if per_layer is None:
        g_dim = _optional_int(raw, "global_head_dim", source, 512)
        g_kv = _optional_int(raw, "num_global_key_value_heads", source)
        g_kv = g_kv if g_kv is not None and _bool(raw, "attention_k_eq_v", False, source) else kv_heads
        return [(g_dim, g_kv) if k == "full_attention" else s for k, s in zip(kinds, sizes)]
    if not isinstance(per_layer, Mapping):
        raise ConfigError(f"{source}: field 'per_layer_config' must be an object, got {per_layer!r}.")
    for key, override in per_layer.items():
        if not str(key).isdigit() or int(key) >= len(kinds) or not isinstance(override, Mapping):
            raise ConfigError(f"{source}: per_layer_config[{key!r}] must map a layer index < {len(kinds)} to an "
                              "object.")
        bad = sorted(set(override) - {"head_dim", "num_key_value_heads"})
        if bad:
            raise ConfigError(f"{source}: per_layer_config[{key!r}] overrides {bad}, which jaxgen does not support "
                              "(only head_dim, num_key_value_heads).")
        i = int(key)
        sizes[i] = (_optional_int(override, "head_dim", source, sizes[i][0]),
                    _optional_int(override, "num_key_value_heads", source, sizes[i][1]))
    return sizes


def _kv_sources(kinds: tuple[str, ...], shared: int, source: str) -> list[int | None]:
    """For each layer, the earlier layer whose keys/values it reuses (transformers' ``kv_sharing_modes``)."""
    n = len(kinds)
    if not 0 <= shared < n:
        raise ConfigError(f"{source}: num_kv_shared_layers={shared} must be in [0, num_hidden_layers={n}).")
    first = n - shared
    sources: list[int | None] = [None] * n
    for i in range(first, n):
        producers = [j for j in range(first) if kinds[j] == kinds[i]]
        if not producers:
            raise ConfigError(f"{source}: num_kv_shared_layers={shared}: no earlier {kinds[i]} layer produces the "
                              f"keys/values layer {i} would share.")
        sources[i] = producers[-1]
    return sources


def _moe(raw: dict, source: str) -> MoESpec | None:
    """The routed experts of ``enable_moe_block`` (transformers' Gemma4TextRouter / Gemma4TextExperts), or None."""
    if not _bool(raw, "enable_moe_block", False, source):
        return None
    sizes = {}
    for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
        sizes[key] = _optional_int(raw, key, source)
        if sizes[key] is None:
            raise ConfigError(f"{source}: enable_moe_block=true needs '{key}' (a positive integer).")
    if sizes["top_k_experts"] > sizes["num_experts"]:
        raise ConfigError(f"{source}: top_k_experts={sizes['top_k_experts']} exceeds num_experts="
                          f"{sizes['num_experts']}.")
    return MoESpec(num_experts=sizes["num_experts"], top_k=sizes["top_k_experts"],
                   intermediate_size=sizes["moe_intermediate_size"], scoring="gemma4")


def parse(raw: dict, source: str) -> ModelConfig:
    hidden, heads, layers, kv_heads = attention_sizes(raw, source)
    reject(raw, "use_bidirectional_attention", source, "bidirectional attention is not a causal LM",
           allowed=(None, "vision"))  # "vision" only changes image tokens, which a text model never sees
    head_dim = _optional_int(raw, "head_dim", source, 256)
    kinds = _layer_types(raw, source) if raw.get("layer_types") else tuple(
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers))
    if len(kinds) != layers or set(kinds) - set(_LAYER_TYPES):
        raise ConfigError(f"{source}: layer_types must hold {layers} entries of {_LAYER_TYPES}, got {kinds}.")
    kinds = kinds[:-1] + ("full_attention",)  # transformers forces the last layer global
    rope_params = raw.get("rope_parameters") or _DEFAULT_ROPE
    if not isinstance(rope_params, Mapping) or not all(isinstance(rope_params.get(k), Mapping) for k in set(kinds)):
        raise ConfigError(f"{source}: gemma4_text needs 'rope_parameters' with one object per layer type "
                          f"{sorted(set(kinds))}, got {rope_params!r}.")
    ropes = {k: _rope(rope_params[k], k, source) for k in set(kinds)}
    norm = NormSpec("rms_f32", positive(raw, "rms_norm_eps", source, 1e-6))
    bias = _bool(raw, "attention_bias", False, source)
    act = activation(raw, "hidden_activation", "gelu_pytorch_tanh", source)
    window = _optional_int(raw, "sliding_window", source, 512)
    k_eq_v = _bool(raw, "attention_k_eq_v", False, source)
    sizes = _layer_sizes(raw, kinds, head_dim, kv_heads, source)
    for i, (d, kv) in enumerate(sizes):
        if heads % kv or d % 2:
            raise ConfigError(f"{source}: layer {i}: num_key_value_heads={kv} must divide num_attention_heads="
                              f"{heads} and head_dim={d} must be even.")
    sources = _kv_sources(kinds, _optional_int(raw, "num_kv_shared_layers", source, 0, minimum=0), source)
    for i, src in enumerate(sources):
        if src is not None and sizes[src] != sizes[i]:
            raise ConfigError(f"{source}: layer {i} shares layer {src}'s keys/values but their per_layer_config "
                              "sizes differ.")
    double_wide = _bool(raw, "use_double_wide_mlp", False, source)
    inter = _require(raw, "intermediate_size", source)
    ple = _optional_int(raw, "hidden_size_per_layer_input", source, 256, minimum=0)
    vocab = _require(raw, "vocab_size", source)
    moe = _moe(raw, source)

    def layer(i: int, kind: str) -> LayerSpec:
        sliding = kind == "sliding_attention"
        attention = AttentionSpec(
            rope=ropes[kind], window=window if sliding else None, scale=1.0, qk_norm=True, qkv_bias=bias,
            o_bias=bias, head_dim=sizes[i][0], num_kv_heads=sizes[i][1], kv_source=sources[i],
            k_eq_v=k_eq_v and not sliding, v_norm=True)
        return LayerSpec(attention=attention, norm=norm, residual="sandwich", mlp="dense+moe" if moe else "gated",
                         activation=act, moe=moe,
                         intermediate_size=2 * inter if double_wide and sources[i] is not None else None,
                         layer_scalar=True)

    final_cap = positive(raw, "final_logit_softcapping", source, None)
    return ModelConfig(
        model_type="gemma4_text", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=norm.eps, max_position_embeddings=_optional_int(raw, "max_position_embeddings", source, 131072),
        rope=ropes["full_attention"], tie_word_embeddings=_bool(raw, "tie_word_embeddings", True, source),
        qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=window if "sliding_attention" in kinds else None,
        layer_types=kinds if "sliding_attention" in kinds else (), hidden_act=act,
        bos_token_id=_token_id(raw, "bos_token_id", source), eos_token_id=_eos_ids(raw, source),
        pad_token_id=_token_id(raw, "pad_token_id", source), checkpoint_dtype=dtype_name(raw, source),
        layers=tuple(layer(i, kind) for i, kind in enumerate(kinds)), final_norm=norm,
        embedding_multiplier=hidden ** 0.5, final_logit_softcap=final_cap,
        per_layer_input_size=ple, per_layer_vocab_size=_optional_int(raw, "vocab_size_per_layer_input", source,
                                                                      262144) if ple else 0,
    )

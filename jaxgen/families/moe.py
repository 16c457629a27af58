"""Mixture-of-experts families on the Llama line: Mixtral, Qwen2-MoE, Qwen3-MoE.

Attention, norms and RoPE are their dense relatives' (Mistral, Qwen2, Qwen3), parsed by ``jaxgen.config._parse``;
the MLP of each sparse layer becomes ``mlp="moe"`` with a :class:`~jaxgen.config.MoESpec`. Mixtral: every layer
sparse, ``num_local_experts`` experts of ``intermediate_size``, top-k always renormalised. Qwen: ``num_experts``
of ``moe_intermediate_size``, ``norm_topk_prob``, dense layers where ``mlp_only_layers`` lists them or
``(i + 1) % decoder_sparse_step`` is not 0 (``intermediate_size`` wide); Qwen2-MoE adds a shared expert.
"""

from __future__ import annotations

import dataclasses

from jaxgen.config import ModelConfig, MoESpec, _bool, _optional_int, _parse, _require
from jaxgen.errors import ConfigError
from jaxgen.families._common import reject

_DENSE = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}


def _moe_spec(raw: dict, model_type: str, source: str) -> MoESpec:
    top_k = _require(raw, "num_experts_per_tok", source)
    if model_type == "mixtral":
        experts = _require(raw, "num_local_experts", source)
        return MoESpec(experts, top_k, _require(raw, "intermediate_size", source), norm_topk_prob=True)
    # Qwen3MoeConfig maps num_experts onto num_local_experts (attribute_map) and writes the latter.
    experts = _require(raw, "num_experts" if raw.get("num_experts") is not None else "num_local_experts", source)
    shared = 0
    if model_type == "qwen2_moe":
        shared = _optional_int(raw, "shared_expert_intermediate_size", source, 0, minimum=0)
    return MoESpec(experts, top_k, _require(raw, "moe_intermediate_size", source),
                   norm_topk_prob=_bool(raw, "norm_topk_prob", False, source), shared_intermediate_size=shared)


def parse(raw: dict, source: str) -> ModelConfig:
    model_type = raw["model_type"]
    dense = dict(raw, model_type=_DENSE[model_type])
    if model_type == "mixtral" and raw.get("rope_parameters") is None:
        dense.setdefault("rope_theta", 1e6)  # MixtralConfig's default, not Mistral's
    if model_type != "mixtral":
        # Qwen2-MoE slides on a different layer pattern than Qwen2; neither sliding variant ships.
        reject(raw, "use_sliding_window", source, "sliding-window Qwen MoE models are not supported")
    base = _parse(dense, source)
    if model_type == "qwen2_moe":  # Qwen2 always has q/k/v biases; Qwen2-MoE reads `qkv_bias` (o_proj: never)
        qkv = _bool(raw, "qkv_bias", True, source)
        base = dataclasses.replace(base, qkv_bias=qkv, layers=tuple(
            dataclasses.replace(s, attention=dataclasses.replace(s.attention, qkv_bias=qkv)) for s in base.layers))
    moe = _moe_spec(raw, model_type, source)
    if not 0 < moe.top_k <= moe.num_experts:
        raise ConfigError(f"{source}: num_experts_per_tok={moe.top_k} must be between 1 and the number of experts "
                          f"{moe.num_experts}.")
    step = _optional_int(raw, "decoder_sparse_step", source, 1)
    dense_layers = set(raw.get("mlp_only_layers") or ())

    def sparse(i: int) -> bool:
        return model_type == "mixtral" or (i not in dense_layers and (i + 1) % step == 0)

    layers = tuple(dataclasses.replace(spec, mlp="moe", moe=moe) if sparse(i) else spec
                   for i, spec in enumerate(base.layers))
    return dataclasses.replace(base, model_type=model_type, layers=layers, final_norm=layers[-1].norm)

"""gpt-oss (``gpt_oss``, transformers' ``GptOssForCausalLM``).

A pre-norm decoder (RMSNorm weights applied in float32, ``rms_f32``) whose layers alternate sliding-window and full
attention per ``layer_types``, with q/k/v/o biases, YaRN RoPE (``truncate: false`` in the released configs) and
attention sinks: one learned logit per head that joins every softmax and whose probability is dropped. Every MLP is
a mixture of experts: a router with a bias picks the top-k logits and softmaxes over those k; experts have biases
and the clamped SwiGLU (``swiglu_limit``, ``swiglu_alpha``). transformers stores each expert's gate and up
columns interleaved (``gate_up_proj [E, hidden, 2 * inter]``: gate at even, up at odd columns); conversion splits
them. Released checkpoints hold the expert weights in MXFP4, which conversion dequantizes
(:mod:`checkpoints_convert.mxfp4`).
"""

from __future__ import annotations

import dataclasses

from jaxgen.config import ModelConfig, MoESpec, NormSpec, _optional_int, _parse, _require
from jaxgen.errors import ConfigError
from jaxgen.families._common import positive


def parse(raw: dict, source: str) -> ModelConfig:
    # The Llama-line parser reads vocabulary, heads, head_dim, layer_types + sliding_window, YaRN, biases and ids;
    # gpt-oss's defaults where transformers' GptOssConfig has them.
    raw = {"attention_bias": True, "rms_norm_eps": 1e-5, "sliding_window": 128, "head_dim": 64,
           "rope_theta": 150000.0, **raw}
    base = _parse(dict(raw, model_type="llama", mlp_bias=False), source)
    experts = _require(raw, "num_local_experts", source)
    top_k = _optional_int(raw, "num_experts_per_tok", source) or _optional_int(raw, "experts_per_token", source, 4)
    if top_k > experts:
        raise ConfigError(f"{source}: num_experts_per_tok={top_k} exceeds num_local_experts={experts}.")
    moe = MoESpec(experts, top_k, base.intermediate_size, scoring="topk_softmax", router_bias=True,
                  expert_bias=True, swiglu_limit=positive(raw, "swiglu_limit", source, 7.0),
                  swiglu_alpha=positive(raw, "swiglu_alpha", source, 1.702))
    norm = NormSpec("rms_f32", base.rms_norm_eps)
    layers = tuple(dataclasses.replace(spec, norm=norm, mlp="moe", moe=moe,
                                       attention=dataclasses.replace(spec.attention, sinks=True))
                   for spec in base.layers)
    return dataclasses.replace(base, model_type="gpt_oss", layers=layers, final_norm=norm)

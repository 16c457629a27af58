"""Qwen3.5 text (``qwen3_5_text``), Qwen3.5-MoE text (``qwen3_5_moe_text``) and Qwen3-Next (``qwen3_next``); also
the language models of ``qwen3_5`` / ``qwen3_5_moe`` checkpoints (jaxgen.families.multimodal).

A hybrid decoder: ``layer_types`` names each layer ``linear_attention`` (Gated DeltaNet, jaxgen.nn.linear_attention)
or ``full_attention`` (q/k norm, partial RoPE, sigmoid output gate on the attention output). Every norm is the
zero-centred ``(1 + w)`` RMSNorm in float32 (``gemma_rms``); the MLP is SwiGLU. Text-only positions make the
interleaved M-RoPE equal to plain RoPE on the first ``partial_rotary_factor * head_dim`` dimensions. Qwen3.5-MoE
replaces every layer's MLP with ``num_experts`` routed experts (softmax top-k, always renormalised) plus a shared
expert behind a sigmoid gate (Qwen2-MoE's block). Qwen3-Next is the same model with Qwen3-MoE's choice of sparse
layers (``mlp_only_layers``, ``decoder_sparse_step``, ``norm_topk_prob``) and its Gated DeltaNet input projections
fused per key head (``in_proj_qkvz``, ``in_proj_ba``), which conversion regroups into Qwen3.5's layout
(``checkpoints_convert.tables.REGROUPS``).
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.config import (AttentionSpec, LayerSpec, LinearAttentionSpec, ModelConfig, MoESpec, NormSpec, RopeConfig,
                           _bool, _eos_ids, _optional_int, _require, _token_id)
from jaxgen.errors import ConfigError
from jaxgen.families._common import activation, attention_sizes, dtype_name, positive

_LAYER_TYPES = ("linear_attention", "full_attention")


def _rope(raw: dict, source: str) -> RopeConfig:
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: field 'rope_parameters' must be an object, got {params!r}.")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: Qwen3.5 RoPE type {rope_type!r} is not supported (only 'default').")
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 0.25))
    return RopeConfig(theta=float(theta), partial_rotary_factor=float(partial))


# transformers' config defaults for absent MoE sizes: (num_experts, num_experts_per_tok)
_MOE_DEFAULTS = {"qwen3_5_moe_text": (256, 8), "qwen3_next": (512, 10)}


def _moe(raw: dict, model_type: str, source: str) -> MoESpec:
    """The sparse block of Qwen3.5-MoE (``Qwen3_5MoeSparseMoeBlock``: top-k always renormalised) or Qwen3-Next
    (``norm_topk_prob``), each with a gated shared expert."""
    experts, top_k = _MOE_DEFAULTS[model_type]
    moe = MoESpec(num_experts=_optional_int(raw, "num_experts", source, experts),
                  top_k=_optional_int(raw, "num_experts_per_tok", source, top_k),
                  intermediate_size=_optional_int(raw, "moe_intermediate_size", source, 512),
                  norm_topk_prob=model_type != "qwen3_next" or _bool(raw, "norm_topk_prob", True, source),
                  shared_intermediate_size=_optional_int(raw, "shared_expert_intermediate_size", source, 512))
    if moe.top_k > moe.num_experts:
        raise ConfigError(f"{source}: num_experts_per_tok={moe.top_k} exceeds num_experts={moe.num_experts}.")
    return moe


def parse(raw: dict, source: str) -> ModelConfig:
    model_type = raw["model_type"]
    moe = _moe(raw, model_type, source) if model_type in _MOE_DEFAULTS else None
    hidden, heads, layers, kv_heads = attention_sizes(raw, source)
    head_dim = _optional_int(raw, "head_dim", source, 256)
    interval = _optional_int(raw, "full_attention_interval", source, 4)  # transformers' default pattern
    kinds = tuple(raw.get("layer_types") or ("linear_attention" if (i + 1) % interval else "full_attention"
                                              for i in range(layers)))
    if len(kinds) != layers or set(kinds) - set(_LAYER_TYPES):
        raise ConfigError(f"{source}: layer_types must hold {layers} entries of {_LAYER_TYPES}, got {kinds}.")
    norm = NormSpec("gemma_rms", positive(raw, "rms_norm_eps", source, 1e-6))
    bias = _bool(raw, "attention_bias", False, source)
    act = activation(raw, "hidden_act", "silu", source)
    rope = _rope(raw, source)
    lin = LinearAttentionSpec(
        num_k_heads=_optional_int(raw, "linear_num_key_heads", source, 16),
        num_v_heads=_optional_int(raw, "linear_num_value_heads", source, 32),
        k_head_dim=_optional_int(raw, "linear_key_head_dim", source, 128),
        v_head_dim=_optional_int(raw, "linear_value_head_dim", source, 128),
        conv_kernel=_optional_int(raw, "linear_conv_kernel_dim", source, 4))
    if lin.num_v_heads % lin.num_k_heads:
        raise ConfigError(f"{source}: linear_num_key_heads={lin.num_k_heads} must divide "
                          f"linear_num_value_heads={lin.num_v_heads}.")

    # Qwen3-Next keeps dense layers where mlp_only_layers lists them or (i + 1) % decoder_sparse_step is not 0.
    step = _optional_int(raw, "decoder_sparse_step", source, 1) if model_type == "qwen3_next" else 1
    dense_layers = set(raw.get("mlp_only_layers") or ()) if model_type == "qwen3_next" else set()

    def layer(i: int, kind: str) -> LayerSpec:
        sparse = moe is not None and moe.num_experts > 0 and i not in dense_layers and (i + 1) % step == 0
        mlp = dict(mlp="moe", moe=moe) if sparse else {}
        if kind == "linear_attention":  # no RoPE table needed for these
            return LayerSpec(attention=AttentionSpec(rope=None), norm=norm, activation=act, linear=lin, **mlp)
        attention = AttentionSpec(rope=rope, qk_norm=True, qkv_bias=bias, o_bias=bias, output_gate=True)
        return LayerSpec(attention=attention, norm=norm, activation=act, **mlp)

    return ModelConfig(
        model_type=model_type, vocab_size=_require(raw, "vocab_size", source), hidden_size=hidden,
        # Qwen3.5-MoE has no dense MLP: the experts' width stands in where a model-wide width is read
        intermediate_size=(moe.intermediate_size if model_type == "qwen3_5_moe_text" else
                           _optional_int(raw, "intermediate_size", source, 5632) if model_type == "qwen3_next" else
                           _require(raw, "intermediate_size", source)),
        num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, rms_norm_eps=norm.eps,
        max_position_embeddings=_optional_int(raw, "max_position_embeddings", source, 32768), rope=rope,
        tie_word_embeddings=_bool(raw, "tie_word_embeddings", False, source), qkv_bias=bias, o_bias=bias,
        qk_norm=True, layer_types=kinds, hidden_act=act,
        bos_token_id=_token_id(raw, "bos_token_id", source), eos_token_id=_eos_ids(raw, source),
        pad_token_id=_token_id(raw, "pad_token_id", source), checkpoint_dtype=dtype_name(raw, source),
        layers=tuple(layer(i, kind) for i, kind in enumerate(kinds)), final_norm=norm,
    )

"""Qwen3.5 text (``qwen3_5_text``; also the language model of ``qwen3_5`` checkpoints, jaxgen.families.multimodal).

A hybrid decoder: ``layer_types`` names each layer ``linear_attention`` (Gated DeltaNet, jaxgen.nn.linear_attention)
or ``full_attention`` (q/k norm, partial RoPE, sigmoid output gate on the attention output). Every norm is the
zero-centred ``(1 + w)`` RMSNorm in float32 (``gemma_rms``); the MLP is SwiGLU. Text-only positions make the
interleaved M-RoPE equal to plain RoPE on the first ``partial_rotary_factor * head_dim`` dimensions.
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.config import (AttentionSpec, LayerSpec, LinearAttentionSpec, ModelConfig, NormSpec, RopeConfig, _bool,
                           _eos_ids, _optional_int, _require, _token_id)
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


def parse(raw: dict, source: str) -> ModelConfig:
    hidden, heads, layers, kv_heads = attention_sizes(raw, source)
    head_dim = _optional_int(raw, "head_dim", source, 256)
    kinds = tuple(raw.get("layer_types") or ("linear_attention" if (i + 1) % 4 else "full_attention"
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

    def layer(kind: str) -> LayerSpec:
        if kind == "linear_attention":  # no RoPE table needed for these
            return LayerSpec(attention=AttentionSpec(rope=None), norm=norm, activation=act, linear=lin)
        attention = AttentionSpec(rope=rope, qk_norm=True, qkv_bias=bias, o_bias=bias, output_gate=True)
        return LayerSpec(attention=attention, norm=norm, activation=act)

    return ModelConfig(
        model_type="qwen3_5_text", vocab_size=_require(raw, "vocab_size", source), hidden_size=hidden,
        intermediate_size=_require(raw, "intermediate_size", source), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, rms_norm_eps=norm.eps,
        max_position_embeddings=_optional_int(raw, "max_position_embeddings", source, 32768), rope=rope,
        tie_word_embeddings=_bool(raw, "tie_word_embeddings", False, source), qkv_bias=bias, o_bias=bias,
        qk_norm=True, layer_types=kinds, hidden_act=act,
        bos_token_id=_token_id(raw, "bos_token_id", source), eos_token_id=_eos_ids(raw, source),
        pad_token_id=_token_id(raw, "pad_token_id", source), checkpoint_dtype=dtype_name(raw, source),
        layers=tuple(layer(kind) for kind in kinds), final_norm=norm,
    )

"""Phi-3 (and Phi-4-mini, which is ``phi3`` with ``partial_rotary_factor``): Llama's pre-norm SwiGLU decoder with
fused ``qkv_proj`` / ``gate_up_proj`` (split at conversion), an optional window on every layer, partial rotary,
and LongRoPE.

RoPE follows ``Phi3Config``: ``rope_type`` is ``default`` or ``longrope`` (4.x ``su`` / ``yarn`` mean longrope),
and the top-level ``original_max_position_embeddings`` (default 4096) wins over one inside the RoPE parameters.
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.config import (AttentionSpec, LayerSpec, ModelConfig, NormSpec, RopeConfig, _bool, _eos_ids,
                           _optional_int, _optional_number, _require, _token_id)
from jaxgen.errors import ConfigError
from jaxgen.families._common import activation, attention_sizes, dtype_name, head_dim, positive


def _factors(params: Mapping, key: str, n: int, source: str) -> tuple[float, ...]:
    value = params.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f"{source}: longrope '{key}' must be a list of {n} positive numbers (rotary_dim / 2), got "
                          f"{value!r}.")
    return tuple(float(v) for v in value)


def _rope(raw: dict, dim: int, source: str) -> RopeConfig:
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{source}: field '{key}' must be an object or null, got {raw[key]!r}.")
    # 5.x: everything in rope_parameters; 4.x: rope_theta and partial_rotary_factor at top level, rope_scaling.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    params.setdefault("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    rope_type = "longrope" if rope_type in ("su", "yarn") else rope_type
    if rope_type not in ("default", "longrope"):
        raise ConfigError(f"{source}: Phi-3 RoPE type {rope_type!r} is not supported; Phi-3 has default or longrope.")
    theta = positive(params, "rope_theta", source, 10000.0)
    partial = positive(params, "partial_rotary_factor", source, 1.0)
    rotary = int(dim * partial)
    if partial > 1 or rotary < 2 or rotary % 2:
        raise ConfigError(f"{source}: partial_rotary_factor={partial} with head_dim={dim} gives rotary dimension "
                          f"{rotary}; it must be even and at most head_dim.")
    if rope_type == "default":
        return RopeConfig(theta=theta, partial_rotary_factor=partial)
    return RopeConfig(
        rope_type="longrope", theta=theta, partial_rotary_factor=partial,
        factor=positive(params, "factor", source, None),
        attention_factor=_optional_number(params, "attention_factor", source),
        original_max_position_embeddings=_optional_int(raw, "original_max_position_embeddings", source, 4096),
        short_factor=_factors(params, "short_factor", rotary // 2, source),
        long_factor=_factors(params, "long_factor", rotary // 2, source))


def parse(raw: dict, source: str) -> ModelConfig:
    hidden, heads, layers, kv_heads = attention_sizes(raw, source)
    dim = head_dim(raw, hidden, heads, source)
    rope = _rope(raw, dim, source)
    window = _optional_int(raw, "sliding_window", source)  # Phi3Model: every layer slides when it is set
    norm = NormSpec("rms", positive(raw, "rms_norm_eps", source, 1e-5))
    act = activation(raw, "hidden_act", "silu", source)
    spec = LayerSpec(attention=AttentionSpec(rope=rope, window=window), norm=norm, mlp="gated", activation=act)
    return ModelConfig(
        model_type="phi3", vocab_size=_require(raw, "vocab_size", source), hidden_size=hidden,
        intermediate_size=_require(raw, "intermediate_size", source), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=dim, rms_norm_eps=norm.eps,
        max_position_embeddings=_optional_int(raw, "max_position_embeddings", source, 4096), rope=rope,
        tie_word_embeddings=_bool(raw, "tie_word_embeddings", False, source), sliding_window=window,
        layer_types=("sliding_attention",) * layers if window else (), hidden_act=raw.get("hidden_act") or "silu",
        bos_token_id=_token_id(raw, "bos_token_id", source), eos_token_id=_eos_ids(raw, source),
        pad_token_id=_token_id(raw, "pad_token_id", source), checkpoint_dtype=dtype_name(raw, source),
        layers=(spec,) * layers, final_norm=norm,
    )

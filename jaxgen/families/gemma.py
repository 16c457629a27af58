"""Gemma 1, 2 and 3 (text): one parse function, since each generation adds a few fields to the last.

What they share: ``(1 + w)`` RMSNorm in float32, GeGLU (tanh GELU), embeddings scaled by ``sqrt(hidden)`` in the
compute dtype, tied head, ``head_dim`` 256 unless given. Gemma 2 adds the sandwich residual (post-attention and
post-feedforward norms), ``query_pre_attn_scalar``, attention and final logit soft-capping, and alternating
sliding/global layers. Gemma 3 adds q/k norms, a local RoPE base for sliding layers (its own ``rope_parameters``
entry, or 4.x ``rope_local_base_freq``) and a sliding pattern (``layer_types``, or 4.x ``sliding_window_pattern``),
and drops attention soft-capping (transformers' Gemma3Attention never applies ``attn_logit_softcapping``).
"""

from __future__ import annotations

from typing import Mapping

from jaxgen.config import (AttentionSpec, LayerSpec, ModelConfig, NormSpec, RopeConfig, _bool, _eos_ids,
                           _layer_types, _optional_int, _parse_rope, _require, _token_id)
from jaxgen.errors import ConfigError
from jaxgen.families._common import activation, attention_sizes, dtype_name, positive, reject

_MAX_POSITIONS = {"gemma": 8192, "gemma2": 8192, "gemma3_text": 131072}
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _layer_kinds(raw: dict, model_type: str, layers: int, source: str) -> tuple[str, ...]:
    if model_type == "gemma":
        return ("full_attention",) * layers
    if raw.get("layer_types"):
        kinds = _layer_types(raw, source)
        if len(kinds) != layers or set(kinds) - set(_LAYER_TYPES):
            raise ConfigError(f"{source}: layer_types must hold {layers} entries of {_LAYER_TYPES}, got {kinds}.")
        return kinds
    # transformers' defaults: Gemma 2 alternates (sliding first); Gemma 3 has one global layer in every `pattern`.
    pattern = 2 if model_type == "gemma2" else _optional_int(raw, "sliding_window_pattern", source, 6)
    return tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers))


def _ropes(raw: dict, model_type: str, max_positions: int, source: str) -> dict[str, RopeConfig]:
    """RoPE per layer type. Gemma 3: 5.x nests one ``rope_parameters`` entry per type; 4.x has ``rope_theta``
    (+ ``rope_scaling``) for global layers and ``rope_local_base_freq`` for sliding ones."""
    base = {"max_position_embeddings": max_positions}
    if model_type != "gemma3_text":
        rope = _parse_rope(raw, {"rope_theta": 10000.0, **base}, source)
        return {kind: rope for kind in _LAYER_TYPES}
    nested = raw.get("rope_parameters")
    if isinstance(nested, Mapping) and set(nested) & set(_LAYER_TYPES):
        sub = lambda kind, theta: {**base, "rope_parameters": nested.get(kind) or {"rope_theta": theta}}  # noqa
        return {"full_attention": _parse_rope(sub("full_attention", 1e6), {"rope_theta": 1e6, **base}, source),
                "sliding_attention": _parse_rope(sub("sliding_attention", 1e4), {"rope_theta": 1e4, **base}, source)}
    local = {**base, "rope_theta": raw.get("rope_local_base_freq") or 10000.0}  # never scaled
    full = {**base, **{k: raw[k] for k in ("rope_theta", "rope_scaling", "rope_parameters") if raw.get(k) is not None}}
    return {"full_attention": _parse_rope(full, {"rope_theta": 1e6, **base}, source),
            "sliding_attention": _parse_rope(local, {"rope_theta": 1e4, **base}, source)}


def parse(raw: dict, source: str) -> ModelConfig:
    model_type = raw["model_type"]
    hidden, heads, layers, kv_heads = attention_sizes(raw, source)
    head_dim = _optional_int(raw, "head_dim", source, 256)  # transformers' Gemma default, not hidden / heads
    reject(raw, "use_bidirectional_attention", source, "bidirectional attention is not a causal LM")
    max_positions = _optional_int(raw, "max_position_embeddings", source, _MAX_POSITIONS[model_type])
    norm = NormSpec("gemma_rms", positive(raw, "rms_norm_eps", source, 1e-6))
    bias = _bool(raw, "attention_bias", False, source)
    if model_type == "gemma":  # 5.x reads hidden_act; legacy "gelu" there means the tanh approximation
        act = "gelu_tanh" if raw.get("hidden_act") in (None, "gelu") else activation(raw, "hidden_act", "", source)
    else:
        act = activation(raw, "hidden_activation", "gelu_pytorch_tanh", source)
    later = model_type != "gemma"
    # Absent means transformers' class default; an explicit null means off.
    scalar = positive(raw, "query_pre_attn_scalar", source, 256.0) if later else None
    attn_cap = positive(raw, "attn_logit_softcapping", source, None) if "attn_logit_softcapping" in raw else 50.0
    final_cap = raw.get("final_logit_softcapping", 30.0 if model_type == "gemma2" else None)
    final_cap = positive({"final_logit_softcapping": final_cap}, "final_logit_softcapping", source, None)
    window = _optional_int(raw, "sliding_window", source, 4096) if later else None
    kinds = _layer_kinds(raw, model_type, layers, source)
    ropes = _ropes(raw, model_type, max_positions, source)

    def layer(kind: str) -> LayerSpec:
        attention = AttentionSpec(
            rope=ropes[kind], window=window if kind == "sliding_attention" else None,
            scale=None if scalar is None else scalar ** -0.5,
            softcap=attn_cap if model_type == "gemma2" else None,
            qk_norm=model_type == "gemma3_text", qkv_bias=bias, o_bias=bias)
        return LayerSpec(attention=attention, norm=norm, residual="sandwich" if later else "pre", mlp="gated",
                         activation=act)

    return ModelConfig(
        model_type=model_type, vocab_size=_require(raw, "vocab_size", source), hidden_size=hidden,
        intermediate_size=_require(raw, "intermediate_size", source), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, rms_norm_eps=norm.eps,
        max_position_embeddings=max_positions, rope=ropes["full_attention"],
        tie_word_embeddings=_bool(raw, "tie_word_embeddings", True, source), qkv_bias=bias, o_bias=bias,
        qk_norm=model_type == "gemma3_text", sliding_window=window if "sliding_attention" in kinds else None,
        layer_types=kinds if "sliding_attention" in kinds else (), hidden_act=act,
        bos_token_id=_token_id(raw, "bos_token_id", source), eos_token_id=_eos_ids(raw, source),
        pad_token_id=_token_id(raw, "pad_token_id", source), checkpoint_dtype=dtype_name(raw, source),
        layers=tuple(layer(kind) for kind in kinds), final_norm=norm, embedding_multiplier=hidden ** 0.5,
        final_logit_softcap=final_cap,
    )

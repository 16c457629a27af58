"""Rotary position embeddings: inverse frequencies for every supported RoPE type, and their application.

Frequencies follow transformers' ``modeling_rope_utils`` (float32 arithmetic), so positions rotate identically.
Every function takes one layer's :class:`RopeConfig` and its rotary dimension (``head_dim`` times
``partial_rotary_factor``), so layers with different bases (Gemma 3 local/global) each get their own table.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxgen.config import RopeConfig


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    return (1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)))
            ).astype(np.float32)


def static_inv_freq(rope: RopeConfig, dim: int, max_positions: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies ``float32[dim // 2]`` and the cos/sin scale, for every type but ``dynamic``
    (``longrope``: the short-context set)."""
    inv_freq = _base_inv_freq(rope.theta, dim)
    if rope.rope_type in ("default", "dynamic"):
        return inv_freq, 1.0
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32), 1.0
    if rope.rope_type == "llama3":
        factor, lo, hi = rope.factor, rope.low_freq_factor, rope.high_freq_factor
        old_ctx = rope.original_max_position_embeddings
        low_wavelen, high_wavelen = old_ctx / lo, old_ctx / hi
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
        smooth = ((old_ctx / wavelen - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    if rope.rope_type == "yarn":
        return _yarn(rope, dim, max_positions)
    if rope.rope_type == "proportional":  # Gemma 4: the first pairs rotate (exponents over the whole head), rest 0
        angles = int(rope.partial_rotary_factor * dim // 2)
        inv = np.zeros(dim // 2, np.float32)
        inv[:angles] = inv_freq[:angles]
        return (inv / np.float32(rope.factor or 1.0)).astype(np.float32), 1.0
    if rope.rope_type == "longrope":
        return longrope_inv_freq(rope, dim, rope.short_factor), _longrope_scale(rope, max_positions)
    raise AssertionError(rope.rope_type)  # ModelConfig parsing rejects other types


def longrope_inv_freq(rope: RopeConfig, dim: int, factors: tuple[float, ...]) -> np.ndarray:
    """LongRoPE: the base frequencies divided by one factor per frequency (``short_factor`` or ``long_factor``)."""
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    ext = np.asarray(factors, np.float32)
    return (np.float32(1.0) / (ext * (np.float32(rope.theta) ** exponent).astype(np.float32))).astype(np.float32)


def _longrope_scale(rope: RopeConfig, max_positions: int) -> float:
    if rope.attention_factor is not None:
        return rope.attention_factor
    orig = rope.original_max_position_embeddings
    # Phi-3 stretches max_position_embeddings past the pretraining length; the ratio is the factor then.
    factor = rope.factor if rope.factor is not None else max_positions / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def _yarn(rope: RopeConfig, dim: int, max_positions: int) -> tuple[np.ndarray, float]:
    base = rope.theta
    orig = rope.original_max_position_embeddings
    factor = rope.factor if rope.factor is not None else max_positions / orig

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = float(get_mscale(factor, rope.mscale) / get_mscale(factor, rope.mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoids a division by zero, as transformers does
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = (np.float32(base) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))).astype(np.float32)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (np.float32(factor) * pos_freqs)
    extra_factor = (1 - ramp).astype(np.float32)
    inv_freq = interpolation * (1 - extra_factor) + extrapolation * extra_factor
    return inv_freq.astype(np.float32), float(attention_factor)


def dynamic_inv_freq(rope: RopeConfig, dim: int, max_pos: int, seq_len: Array) -> Array:
    """Dynamic-NTK inverse frequencies for the current sequence length (a traced scalar).

    Matches transformers within one ``generate`` call: the base grows once the sequence passes
    ``max_position_embeddings``, and stays the original below it.
    """
    seq = jnp.maximum(seq_len.astype(jnp.float32), jnp.float32(max_pos))
    base = rope.theta * ((rope.factor * seq / max_pos) - (rope.factor - 1)) ** (dim / (dim - 2))
    exponent = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    grown = 1.0 / (base ** exponent)
    return jnp.where(seq_len > max_pos, grown, jnp.asarray(_base_inv_freq(rope.theta, dim)))


def rope_cos_sin(rope: RopeConfig, dim: int, max_positions: int, positions: Array,
                 dtype: jnp.dtype) -> tuple[Array, Array]:
    """cos and sin ``dtype[B, T, dim]`` for integer ``positions[B, T]`` (``dim``: the rotary dimension).

    ``dynamic`` and ``longrope`` pick their frequencies from the longest position of this call, as transformers
    does from ``max(position_ids) + 1``.
    """
    seq_len = jnp.max(positions) + 1
    if rope.rope_type == "dynamic":
        inv_freq, scale = dynamic_inv_freq(rope, dim, max_positions, seq_len), 1.0
    else:
        inv, scale = static_inv_freq(rope, dim, max_positions)
        inv_freq = jnp.asarray(inv)
        if rope.rope_type == "longrope":
            long = jnp.asarray(longrope_inv_freq(rope, dim, rope.long_factor))
            inv_freq = jnp.where(seq_len > rope.original_max_position_embeddings, long, inv_freq)
    freqs = positions[..., None].astype(jnp.float32) * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * scale).astype(dtype), (jnp.sin(emb) * scale).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate ``x[B, T, heads, head_dim]`` by ``cos/sin[B, T, rotary_dim]`` (transformers' half-split layout).

    With partial rotary (``rotary_dim < head_dim``, Phi-4-mini) only the leading ``rotary_dim`` dimensions turn.
    """
    rotary = cos.shape[-1]
    rot, keep = x[..., :rotary], x[..., rotary:]
    half = rotary // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    out = rot * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out if rotary == x.shape[-1] else jnp.concatenate([out, keep], axis=-1)

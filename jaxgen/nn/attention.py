"""Grouped-query self-attention over an explicit KV cache (MHA, GQA and MQA are the same code)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import LayerSpec, ModelConfig
from jaxgen.nn.layers import linear, norm
from jaxgen.nn.rope import apply_rope


class Attention(nnx.Module):
    """q/k/v/o projections (optional biases), optional per-head q/k norm (Qwen3, Gemma 3), RoPE (full or partial,
    or none with learned positions), scaled and optionally soft-capped scores, cached attention."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        h, c, a = config.hidden_size, config, spec.attention
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.output_gate = a.output_gate
        self.q_proj = linear(h, c.q_size * (2 if a.output_gate else 1), a.qkv_bias, dtype, param_dtype, precision,
                             rngs)
        self.k_proj = linear(h, c.kv_size, a.qkv_bias, dtype, param_dtype, precision, rngs)
        self.v_proj = linear(h, c.kv_size, a.qkv_bias, dtype, param_dtype, precision, rngs)
        self.o_proj = linear(c.q_size, h, a.o_bias, dtype, param_dtype, precision, rngs)
        if a.qk_norm:  # one norm over head_dim, shared by all heads
            self.q_norm = norm(spec.norm, c.head_dim, param_dtype)
            self.k_norm = norm(spec.norm, c.head_dim, param_dtype)
        self.qk_norm = a.qk_norm
        self.scale = c.head_dim ** -0.5 if a.scale is None else a.scale
        self.softcap = a.softcap
        self.precision = precision

    def __call__(self, x: Array, rope: tuple[Array, Array] | None, k_cache: Array, v_cache: Array, index: Array,
                 mask: Array) -> tuple[Array, Array, Array]:
        """x ``[B, T, hidden]``; ``rope``: cos/sin ``[B, T, rotary_dim]`` or None; caches ``[B, kv_heads, S,
        head_dim]``; mask ``bool[B, T, S]``.

        Writes this call's keys/values at slot ``index`` and returns ``(out[B, T, hidden], k_cache, v_cache)``.
        """
        b, t, _ = x.shape
        q = self.q_proj(x)
        if self.output_gate:  # per head [q (head_dim) | gate (head_dim)], as transformers' Qwen3_5Attention chunks
            q = q.reshape(b, t, self.num_heads, 2 * self.head_dim)
            q, gate = q[..., :self.head_dim], q[..., self.head_dim:].reshape(b, t, -1)
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        head_major = lambda a: a.transpose(0, 2, 1, 3)  # [B, T, heads, D] -> [B, heads, T, D] (only the new rows)
        k_cache = jax.lax.dynamic_update_slice(k_cache, head_major(k).astype(k_cache.dtype), (0, 0, index, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, head_major(v).astype(v_cache.dtype), (0, 0, index, 0))

        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
        scores = jnp.einsum("btkgd,bksd->bkgts", q, k_cache.astype(q.dtype), precision=self.precision,
                            preferred_element_type=jnp.float32) * self.scale
        if self.softcap is not None:  # Gemma 2: bounds the scores smoothly to (-cap, cap)
            scores = jnp.tanh(scores / self.softcap) * self.softcap
        # A finite minimum, not -inf: a fully masked (padding) query row then stays finite instead of NaN.
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bkgts,bksd->btkgd", probs, v_cache.astype(x.dtype), precision=self.precision)
        out = out.reshape(b, t, self.num_heads * self.head_dim)
        if self.output_gate:
            out = out * jax.nn.sigmoid(gate)
        return self.o_proj(out), k_cache, v_cache

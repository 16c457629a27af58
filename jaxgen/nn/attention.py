"""Grouped-query self-attention over an explicit KV cache (MHA, GQA and MQA are the same code)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import LayerSpec, ModelConfig
from jaxgen.nn.layers import linear, norm, rms_normalize
from jaxgen.nn.rope import apply_rope

# Calls on a cache of at least LIVE_MIN_CAPACITY slots read only its written slots (Attention._live_attention),
# LIVE_CHUNK at a time, or DECODE_CHUNK in one-token steps; shorter caches read every slot at once, which is
# cheaper there. Measured on XLA:CPU (12 layers, 32 rows, 4 KV heads x 3, head_dim 64, 768 slots, live
# window 200-700): one-token steps took 121 ms with 256-slot chunks, 87 with 128, 51 with 64, 57 with 32.
LIVE_CHUNK = 256
DECODE_CHUNK = 64
LIVE_MIN_CAPACITY = 256


class Attention(nnx.Module):
    """q/k/v/o projections (optional biases), optional per-head q/k norm (Qwen3, Gemma 3), RoPE (full or partial,
    or none with learned positions), scaled and optionally soft-capped scores, cached attention."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        h, c, a = config.hidden_size, config, spec.attention
        d = a.head_dim or c.head_dim  # Gemma 4: global layers have their own head_dim / KV heads
        self.num_heads, self.head_dim = c.num_attention_heads, d
        self.num_kv_heads = a.num_kv_heads or c.num_key_value_heads
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        self.output_gate = a.output_gate
        # kv_source: a KV-sharing layer (Gemma 4) reads another layer's cache and has no k/v weights of its own.
        self.shared_kv, self.k_eq_v, self.v_norm = a.kv_source is not None, a.k_eq_v, a.v_norm
        self.eps = spec.norm.eps
        self.q_proj = linear(h, q_size * (2 if a.output_gate else 1), a.qkv_bias, dtype, param_dtype, precision,
                             rngs)
        if not self.shared_kv:
            self.k_proj = linear(h, kv_size, a.qkv_bias, dtype, param_dtype, precision, rngs)
            if not a.k_eq_v:
                self.v_proj = linear(h, kv_size, a.qkv_bias, dtype, param_dtype, precision, rngs)
        self.o_proj = linear(q_size, h, a.o_bias, dtype, param_dtype, precision, rngs)
        if a.qk_norm:  # one norm over head_dim, shared by all heads
            self.q_norm = norm(spec.norm, d, param_dtype)
            if not self.shared_kv:
                self.k_norm = norm(spec.norm, d, param_dtype)
        self.qk_norm = a.qk_norm
        self.scale = d ** -0.5 if a.scale is None else a.scale
        self.softcap = a.softcap
        self.precision = precision
        self.use_sinks = a.sinks
        if a.sinks:  # gpt-oss: one logit per head that joins every softmax
            self.sinks = nnx.Param(jnp.zeros((self.num_heads,), param_dtype))

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
        if self.qk_norm:
            q = self.q_norm(q)
        if rope is not None:
            q = apply_rope(q, *rope)
        if not self.shared_kv:  # a KV-sharing layer's caches already hold this step's rows (written by the source)
            k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
            v = k if self.k_eq_v else self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
            if self.qk_norm:
                k = self.k_norm(k)
            if self.v_norm:
                v = rms_normalize(v, self.eps).astype(v.dtype)
            if rope is not None:
                k = apply_rope(k, *rope)
            head_major = lambda a: a.transpose(0, 2, 1, 3)  # [B, T, heads, D] -> [B, heads, T, D] (new rows only)
            k_cache = jax.lax.dynamic_update_slice(k_cache, head_major(k).astype(k_cache.dtype), (0, 0, index, 0))
            v_cache = jax.lax.dynamic_update_slice(v_cache, head_major(v).astype(v_cache.dtype), (0, 0, index, 0))

        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
        if k_cache.shape[2] >= LIVE_MIN_CAPACITY:
            out = self._live_attention(q, k_cache, v_cache, mask, index + t).astype(x.dtype)
        else:
            out = self._full_attention(q, k_cache, v_cache, mask, x.dtype)
        out = out.reshape(b, t, self.num_heads * self.head_dim)
        if self.output_gate:
            out = out * jax.nn.sigmoid(gate)
        return self.o_proj(out), k_cache, v_cache

    def _scores(self, q: Array, k: Array) -> Array:
        """f32 ``[B, kv, g, T, S]``: scaled (and soft-capped) ``q . k``."""
        scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(q.dtype), precision=self.precision,
                            preferred_element_type=jnp.float32) * self.scale
        if self.softcap is not None:  # Gemma 2: bounds the scores smoothly to (-cap, cap)
            scores = jnp.tanh(scores / self.softcap) * self.softcap
        return scores

    def _full_attention(self, q: Array, k_cache: Array, v_cache: Array, mask: Array, dtype) -> Array:
        """Softmax over every slot of the cache (prefill, and short caches): ``[B, T, kv, g, D]``."""
        b, t, _, groups, _ = q.shape
        scores = self._scores(q, k_cache)
        # A finite minimum, not -inf: a fully masked (padding) query row then stays finite instead of NaN.
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        if self.use_sinks:  # softmax over [scores, sink], the sink's share dropped (probabilities sum below 1)
            sink = self.sinks[...].astype(jnp.float32).reshape(1, self.num_kv_heads, groups, 1, 1)
            top = jnp.maximum(jnp.max(scores, axis=-1, keepdims=True), sink)
            e = jnp.exp(scores - top)
            probs = (e / (jnp.sum(e, axis=-1, keepdims=True) + jnp.exp(sink - top))).astype(dtype)
        else:
            probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        return jnp.einsum("bkgts,bksd->btkgd", probs, v_cache.astype(dtype), precision=self.precision)

    def _live_attention(self, q: Array, k_cache: Array, v_cache: Array, mask: Array, live: Array) -> Array:
        """Attention over only the written slots ``[0, live)``, ``LIVE_CHUNK`` slots at a time (``DECODE_CHUNK``
        in one-token steps) with a running (online) softmax: a call whose cache holds thousands of slots
        (``max_new_tokens=4096``) but whose rows stop early reads what it wrote, in its prefill and in every
        step, not the capacity. Chunks before the first slot any row may see are skipped too (the engine's rows
        start far into its cache). f32 ``[B, T, kv, g, D]``."""
        b, t, kv, groups, d = q.shape
        capacity = k_cache.shape[2]
        c = min(LIVE_CHUNK if t > 1 else DECODE_CHUNK, capacity)
        low = jnp.finfo(jnp.float32).min

        def body(i, carry):
            top, total, acc = carry  # [B, kv, g, T, 1], [B, kv, g, T, 1], [B, kv, g, T, D]
            start = i * c
            at = jnp.minimum(start, capacity - c)  # the last chunk may overlap the one before: its repeats masked
            keys = jax.lax.dynamic_slice_in_dim(k_cache, at, c, axis=2)
            values = jax.lax.dynamic_slice_in_dim(v_cache, at, c, axis=2)
            seen = jax.lax.dynamic_slice_in_dim(mask, at, c, axis=2) & (at + jnp.arange(c) >= start)
            scores = jnp.where(seen[:, None, None], self._scores(q, keys), low)
            new_top = jnp.maximum(top, jnp.max(scores, axis=-1, keepdims=True))
            e = jnp.exp(scores - new_top)
            keep = jnp.exp(top - new_top)
            pv = jnp.einsum("bkgts,bksd->bkgtd", e, values.astype(jnp.float32), precision=self.precision)
            return new_top, total * keep + jnp.sum(e, axis=-1, keepdims=True), acc * keep + pv

        init = (jnp.full((b, kv, groups, t, 1), low, jnp.float32), jnp.zeros((b, kv, groups, t, 1), jnp.float32),
                jnp.zeros((b, kv, groups, t, d), jnp.float32))
        # A skipped chunk sees no slot: in the running softmax it would only add terms that the first chunk with
        # a visible slot multiplies by exp(min - max) = 0, so skipping it changes no bit.
        first = jnp.argmax(jnp.any(mask, axis=(0, 1))) // c
        top, total, acc = jax.lax.fori_loop(first, (live + c - 1) // c, body, init)
        if self.use_sinks:  # the sink joins the denominator only
            sink = self.sinks[...].astype(jnp.float32).reshape(1, kv, groups, 1, 1)
            final = jnp.maximum(top, sink)
            scale = jnp.exp(top - final)
            out = acc * scale / (total * scale + jnp.exp(sink - final))
        else:
            out = acc / total
        return out.transpose(0, 3, 1, 2, 4)  # [B, T, kv, g, D]

"""Multi-head latent attention (DeepSeek-V2/V3) over a cache of compressed latents.

Per token the cache keeps ``kv_a_layernorm(latent) [kv_lora_rank]`` (as the layer's ``keys`` entry, one "head")
and the rotated shared key ``[qk_rope_head_dim]`` (as its ``values`` entry): ``kv_lora_rank + qk_rope_head_dim``
numbers instead of ``heads * (qk_head_dim + v_head_dim)``. Attention runs one of two equal ways:

* ``expand``: ``kv_b_proj`` turns every cached latent into per-head ``k_nope`` and ``v`` (transformers' way),
  cheaper when many queries share the expansion (prefill);
* ``absorb``: ``kv_b_proj``'s key half is folded into the query and its value half applied after the weighted sum,
  so scores and outputs are taken against the latent itself; no per-head keys/values are formed (decode).

``auto`` picks the one with fewer multiply-adds for this call's shapes (static).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import LayerSpec, ModelConfig, NormSpec
from jaxgen.nn.layers import linear, norm
from jaxgen.nn.rope import apply_rope

IMPLS = ("auto", "expand", "absorb")
# transformers builds q_a_layernorm / kv_a_layernorm with DeepseekV3RMSNorm's default eps, not rms_norm_eps.
_LATENT_NORM = NormSpec("rms", 1e-6)


def deinterleave(x: Array) -> Array:
    """``[..., (x0, x1), (x2, x3), ...]`` -> ``[..., x0, x2, ... | x1, x3, ...]``: DeepSeek's interleaved rotary pairs
    in the half-split layout :func:`apply_rope` rotates (transformers' ``apply_rotary_pos_emb_interleave`` returns
    this layout too, for q and k alike, so scores are unchanged)."""
    return jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


class MLA(nnx.Module):
    """transformers' ``DeepseekV3Attention`` with its parameter names."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        h, a = config.hidden_size, spec.attention
        m = a.mla
        self.num_heads, self.nope, self.rope_dim, self.v_dim = (config.num_attention_heads, m.qk_nope_head_dim,
                                                                m.qk_rope_head_dim, m.v_head_dim)
        self.rank, self.interleave, self.low_rank_q = m.kv_lora_rank, m.interleave, m.q_lora_rank is not None
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        lin = lambda n_in, n_out, bias: linear(n_in, n_out, bias, dtype, param_dtype, precision, rngs)  # noqa: E731
        if self.low_rank_q:
            self.q_a_proj = lin(h, m.q_lora_rank, a.qkv_bias)
            self.q_a_layernorm = norm(_LATENT_NORM, m.q_lora_rank, param_dtype)
            self.q_b_proj = lin(m.q_lora_rank, self.num_heads * qk, False)
        else:
            self.q_proj = lin(h, self.num_heads * qk, False)
        self.kv_a_proj_with_mqa = lin(h, m.kv_lora_rank + m.qk_rope_head_dim, a.qkv_bias)
        self.kv_a_layernorm = norm(_LATENT_NORM, m.kv_lora_rank, param_dtype)
        self.kv_b_proj = lin(m.kv_lora_rank, self.num_heads * (m.qk_nope_head_dim + m.v_head_dim), False)
        self.o_proj = lin(self.num_heads * m.v_head_dim, h, a.o_bias)
        self.scale = qk ** -0.5 if a.scale is None else a.scale
        self.dtype, self.precision = jnp.dtype(dtype), precision
        self.impl = "auto"  # tests force "expand" / "absorb" to compare the paths

    def _choose(self, t: int, s: int) -> str:
        if self.impl != "auto":
            return self.impl
        r, kv = self.rank, self.nope + self.v_dim
        expand = s * r * kv + t * s * kv  # per head: expand the cache, then scores and outputs of width nope / v
        absorb = t * r * kv + 2 * t * s * r  # fold into q and out; scores and outputs of width kv_lora_rank
        return "absorb" if absorb < expand else "expand"

    def __call__(self, x: Array, rope: tuple[Array, Array], latent_cache: Array, rope_cache: Array, index: Array,
                 mask: Array) -> tuple[Array, Array, Array]:
        """x ``[B, T, hidden]``; ``rope``: cos/sin ``[B, T, qk_rope_head_dim]``; ``latent_cache [B, 1, S,
        kv_lora_rank]`` and ``rope_cache [B, 1, S, qk_rope_head_dim]``; mask ``bool[B, T, S]``.

        Writes this call's latents and rotated keys at slot ``index``; returns ``(out[B, T, hidden], latent_cache,
        rope_cache)``."""
        b, t, _ = x.shape
        n, p = self.num_heads, self.precision
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.low_rank_q else self.q_proj(x)
        q = q.reshape(b, t, n, self.nope + self.rope_dim)
        q_nope, q_rot = q[..., :self.nope], q[..., self.nope:]
        kv = self.kv_a_proj_with_mqa(x)
        latent, k_rot = self.kv_a_layernorm(kv[..., :self.rank]), kv[..., self.rank:][:, :, None, :]
        if self.interleave:
            q_rot, k_rot = deinterleave(q_rot), deinterleave(k_rot)
        q_rot, k_rot = apply_rope(q_rot, *rope), apply_rope(k_rot, *rope)
        latent_cache = jax.lax.dynamic_update_slice(latent_cache, latent[:, None].astype(latent_cache.dtype),
                                                    (0, 0, index, 0))
        rope_cache = jax.lax.dynamic_update_slice(rope_cache, k_rot.transpose(0, 2, 1, 3).astype(rope_cache.dtype),
                                                  (0, 0, index, 0))
        lat, kr = latent_cache[:, 0].astype(x.dtype), rope_cache[:, 0].astype(x.dtype)  # [B, S, r], [B, S, rope]
        w = self.kv_b_proj.kernel[...].astype(x.dtype).reshape(self.rank, n, self.nope + self.v_dim)
        w_k, w_v = w[..., :self.nope], w[..., self.nope:]
        f32 = dict(precision=p, preferred_element_type=jnp.float32)
        scores = jnp.einsum("bthd,bsd->bhts", q_rot, kr, **f32)
        absorb = self._choose(t, lat.shape[1]) == "absorb"
        if absorb:
            q_lat = jnp.einsum("bthd,rhd->bthr", q_nope, w_k, precision=p)
            scores = scores + jnp.einsum("bthr,bsr->bhts", q_lat, lat, **f32)
        else:
            k_nope = jnp.einsum("bsr,rhd->bshd", lat, w_k, precision=p)
            scores = scores + jnp.einsum("bthd,bshd->bhts", q_nope, k_nope, **f32)
        scores = jnp.where(mask[:, None], scores * self.scale, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        if absorb:
            out = jnp.einsum("bthr,rhd->bthd", jnp.einsum("bhts,bsr->bthr", probs, lat, precision=p), w_v,
                             precision=p)
        else:
            out = jnp.einsum("bhts,bshd->bthd", probs, jnp.einsum("bsr,rhd->bshd", lat, w_v, precision=p),
                             precision=p)
        return self.o_proj(out.reshape(b, t, n * self.v_dim)), latent_cache, rope_cache

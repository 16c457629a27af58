"""Gated DeltaNet pieces (Qwen3.5 / Qwen3-Next linear-attention layers) as pure functions.

Shapes: ``q, k [B, T, Hk, Dk]``, ``v [B, T, Hv, Dv]``, ``g, beta [B, T, Hv]`` (``g`` is the log decay, <= 0),
recurrent state ``[B, Hv, Dk, Dv]``, conv state ``[B, K - 1, C]`` (the last ``K - 1`` conv inputs).

Two forms of the same gated delta rule, matching transformers' ``torch_recurrent_gated_delta_rule`` (decode, one
token a step, cost independent of context) and ``torch_chunk_gated_delta_rule`` (prefill: intra-chunk work as
matmuls, one sequential step per chunk). ``mask[B, T]`` (1 real, 0 padding) turns a padded token into the identity
on the state (decay 1, no write), so a left-padded row ends with exactly the unpadded row's state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import LinearAttentionSpec
from jaxgen.nn.layers import linear

_HI = jax.lax.Precision.HIGHEST


def l2norm(x: Array, eps: float = 1e-6) -> Array:
    """``x * rsqrt(sum(x^2) + eps)`` over the last axis (transformers/FLA's form, eps inside the root)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def gated_rms_norm(x: Array, gate: Array, weight: Array, eps: float) -> Array:
    """``weight * rms_normalize(x) * silu(gate)`` over the last axis (plain ``w``, not ``1 + w``); normalised in
    float32 then cast back before the weight, as transformers' ``Qwen3_5RMSNormGated``."""
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    out = weight * xf.astype(dtype)
    return (out * jax.nn.silu(gate.astype(jnp.float32))).astype(dtype)


def causal_conv1d(x: Array, weight: Array, state: Array | None, mask: Array | None = None,
                  bias: Array | None = None) -> tuple[Array, Array]:
    """Depthwise causal conv then SiLU. ``x [B, T, C]``, ``weight [C, K]`` (torch's ``[C, 1, K]`` squeezed),
    ``state [B, K - 1, C]`` (None: zeros). Returns ``(silu(conv) [B, T, C], new state [B, K - 1, C])``.

    Padded tokens (``mask`` 0) enter the window as zeros, like transformers' ``apply_mask_to_padding_states``;
    a fully padded step (decode with ``mask`` 0) keeps the old state, so it never shifts real history out.
    """
    b, t, c = x.shape
    kk = weight.shape[1]
    if state is None:
        state = jnp.zeros((b, kk - 1, c), x.dtype)
    if mask is not None:
        x = x * mask[:, :, None].astype(x.dtype)
    full = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, K-1+T, C]
    # out[t] = sum_j w[:, j] * full[t + j]: K shifted multiply-adds (K is 4), exact in float32 like conv1d.
    out = sum(full[:, j:j + t, :] * weight[:, j].astype(x.dtype) for j in range(kk))
    if bias is not None:
        out = out + bias
    new_state = full[:, t:, :]
    if mask is not None:
        keep = jnp.any(mask.astype(bool), axis=1)[:, None, None]
        new_state = jnp.where(keep, new_state, state.astype(x.dtype))
    return jax.nn.silu(out), new_state


def _prepare(q, k, v, g, beta, mask, use_qk_l2norm):
    """Shared preamble: repeat k-heads over their value heads, float32, head-major, l2norm, 1/sqrt(Dk) scaling,
    and padding made the identity on the state. Returns tensors as ``[B, H, T, ...]``."""
    hk, hv = k.shape[2], v.shape[2]
    if hk != hv:  # each query/key head serves hv // hk consecutive value heads (repeat_interleave)
        q, k = (jnp.repeat(x, hv // hk, axis=2) for x in (q, k))
    q, k, v = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (q, k, v))
    g, beta = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * (q.shape[-1] ** -0.5)
    if mask is not None:
        real = jnp.asarray(mask, bool)[:, None, :]
        g, beta = jnp.where(real, g, 0.0), jnp.where(real, beta, 0.0)
    return q, k, v, g, beta


def _init_state(state, q, v):
    b, h, _, dk = q.shape
    return jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32) if state is None else state.astype(jnp.float32)


def recurrent_gated_delta_rule(q: Array, k: Array, v: Array, g: Array, beta: Array, state: Array | None = None,
                               mask: Array | None = None, use_qk_l2norm: bool = True) -> tuple[Array, Array]:
    """Token-by-token gated delta rule. Returns ``(out [B, T, Hv, Dv] in q's dtype, state [B, Hv, Dk, Dv] f32)``.

    Per token: ``S *= exp(g)``; ``S += k (beta (v - k^T S))^T``; ``o = q^T S``.
    """
    dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, mask, use_qk_l2norm)
    s0 = _init_state(state, q, v)

    def step(s, xs):
        q_t, k_t, v_t, g_t, b_t = xs  # [B, H, D], ..., [B, H]
        s = s * jnp.exp(g_t)[..., None, None]
        kv_mem = jnp.einsum("bhkv,bhk->bhv", s, k_t, precision=_HI)
        delta = (v_t - kv_mem) * b_t[..., None]
        s = s + k_t[..., :, None] * delta[..., None, :]
        return s, jnp.einsum("bhkv,bhk->bhv", s, q_t, precision=_HI)

    time_major = lambda x: jnp.moveaxis(x, 2, 0)  # noqa: E731
    s, out = jax.lax.scan(step, s0, tuple(map(time_major, (q, k, v, g, beta))))
    return jnp.moveaxis(out, 0, 1).astype(dtype), s  # [T, B, H, Dv] -> [B, T, H, Dv]


def chunked_gated_delta_rule(q: Array, k: Array, v: Array, g: Array, beta: Array, state: Array | None = None,
                             mask: Array | None = None, use_qk_l2norm: bool = True,
                             chunk_size: int = 64) -> tuple[Array, Array]:
    """Chunked gated delta rule (same result as :func:`recurrent_gated_delta_rule`, up to float rounding).

    Within a chunk the delta-rule updates are condensed by the UT transform (a unit-lower-triangular solve); the
    state is carried across chunks by a scan. T is zero-padded at the end to a multiple of ``chunk_size``.
    """
    dtype = q.dtype
    t = q.shape[1]
    q, k, v, g, beta = _prepare(q, k, v, g, beta, mask, use_qk_l2norm)
    s0 = _init_state(state, q, v)
    c = chunk_size
    pad = (-t) % c
    q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
    g, beta = (jnp.pad(x, ((0, 0), (0, 0), (0, pad))) for x in (g, beta))
    b, h, tp, _ = q.shape
    chunks = lambda x: x.reshape(b, h, tp // c, c, *x.shape[3:])  # noqa: E731
    k_beta, v_beta = chunks(k * beta[..., None]), chunks(v * beta[..., None])
    q, k, g = chunks(q), chunks(k), chunks(g)

    cum = jnp.cumsum(g, axis=-1)  # [B, H, N, C] log decay from chunk start to each position
    lower = jnp.tril(jnp.ones((c, c), bool))
    # exp(cum_i - cum_j) for j <= i; the upper triangle is masked before exp so it cannot overflow.
    pair = jnp.exp(jnp.where(lower, cum[..., :, None] - cum[..., None, :], -jnp.inf))
    mm = lambda a, bb: jnp.einsum("...ij,...jk->...ik", a, bb, precision=_HI)  # noqa: E731
    kt = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    ut = mm(k_beta, kt(k)) * pair
    intra = mm(q, kt(k)) * pair
    solve = lambda rhs: jax.lax.linalg.triangular_solve(  # noqa: E731
        ut, rhs, left_side=True, lower=True, unit_diagonal=True)
    new_values = solve(v_beta)  # u: the corrections the chunk writes, before the old state is subtracted
    k_cumdecay = solve(k_beta * jnp.exp(cum)[..., None])
    q = q * jnp.exp(cum)[..., None]
    k = k * jnp.exp(cum[..., -1:] - cum)[..., None]
    chunk_decay = jnp.exp(cum[..., -1])[..., None, None]  # [B, H, N, 1, 1]

    def step(s, xs):
        q_i, k_i, u_i, kc_i, intra_i, d_i = xs
        v_new = u_i - mm(kc_i, s)
        out = mm(q_i, s) + mm(intra_i, v_new)
        return s * d_i + mm(kt(k_i), v_new), out

    chunk_major = lambda x: jnp.moveaxis(x, 2, 0)  # noqa: E731
    s, out = jax.lax.scan(step, s0, tuple(map(chunk_major, (q, k, new_values, k_cumdecay, intra, chunk_decay))))
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, tp, -1)[:, :, :t]  # [N, B, H, C, Dv] -> [B, H, T, Dv]
    return jnp.swapaxes(out, 1, 2).astype(dtype), s


class GatedDeltaNet(nnx.Module):
    """A Qwen3.5 ``linear_attn`` layer with transformers' parameter names: ``in_proj_qkv`` (fused ``[q | k | v]``,
    conv'd together), ``in_proj_z`` (output gate), ``in_proj_b`` (beta), ``in_proj_a`` (decay), ``conv1d.weight``
    ``[C, 1, K]`` (torch's depthwise layout, so conversion is the identity), ``dt_bias``, ``A_log``, ``norm.weight`` (gated RMSNorm), ``out_proj``.
    """

    def __init__(self, hidden: int, spec: LinearAttentionSpec, eps: float, *, dtype, param_dtype, precision,
                 rngs: nnx.Rngs):
        s = spec
        self.spec, self.eps = s, eps
        key_dim, value_dim = s.num_k_heads * s.k_head_dim, s.num_v_heads * s.v_head_dim
        self.in_proj_qkv = linear(hidden, 2 * key_dim + value_dim, False, dtype, param_dtype, precision, rngs)
        self.in_proj_z = linear(hidden, value_dim, False, dtype, param_dtype, precision, rngs)
        self.in_proj_b = linear(hidden, s.num_v_heads, False, dtype, param_dtype, precision, rngs)
        self.in_proj_a = linear(hidden, s.num_v_heads, False, dtype, param_dtype, precision, rngs)
        self.conv1d = nnx.Module()
        self.conv1d.weight = nnx.Param(nnx.initializers.normal(0.2)(rngs.params(), (s.conv_dim, 1, s.conv_kernel),
                                                                    param_dtype))
        self.dt_bias = nnx.Param(jnp.ones((s.num_v_heads,), param_dtype))
        self.A_log = nnx.Param(jnp.zeros((s.num_v_heads,), param_dtype))
        self.norm = nnx.Module()
        self.norm.weight = nnx.Param(jnp.ones((s.v_head_dim,), param_dtype))
        self.out_proj = linear(value_dim, hidden, False, dtype, param_dtype, precision, rngs)

    def __call__(self, x: Array, conv_state: Array, rec_state: Array, mask: Array) -> tuple[Array, Array, Array]:
        """x ``[B, T, hidden]``, mask ``[B, T]``. ``T == 1`` (decode) takes the recurrent form, otherwise the
        chunked one. Returns ``(out [B, T, hidden], conv_state, rec_state)``."""
        s = self.spec
        b, t, _ = x.shape
        x = x * mask[:, :, None].astype(x.dtype)  # transformers' apply_mask_to_padding_states
        qkv, conv_state = causal_conv1d(self.in_proj_qkv(x), self.conv1d.weight[:, 0, :], conv_state, mask)
        key_dim = s.num_k_heads * s.k_head_dim
        q = qkv[..., :key_dim].reshape(b, t, s.num_k_heads, s.k_head_dim)
        k = qkv[..., key_dim:2 * key_dim].reshape(b, t, s.num_k_heads, s.k_head_dim)
        v = qkv[..., 2 * key_dim:].reshape(b, t, s.num_v_heads, s.v_head_dim)
        beta = jax.nn.sigmoid(self.in_proj_b(x))
        a = self.in_proj_a(x).astype(jnp.float32)
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a + self.dt_bias[...])
        rule = recurrent_gated_delta_rule if t == 1 else chunked_gated_delta_rule
        out, rec_state = rule(q, k, v, g, beta, rec_state, mask=mask)
        z = self.in_proj_z(x).reshape(b, t, s.num_v_heads, s.v_head_dim)
        out = gated_rms_norm(out, z, self.norm.weight[...].astype(out.dtype), self.eps)
        return self.out_proj(out.reshape(b, t, -1)), conv_state, rec_state

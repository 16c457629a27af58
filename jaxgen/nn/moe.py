"""Mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE) with transformers' routing numerics.

Routing (``MixtralTopKRouter`` / ``Qwen2MoeTopKRouter``): logits ``x @ gate``, softmax over all experts in float32,
top-k of the probabilities, optionally renormalised over the k chosen. Experts are SwiGLU MLPs stored stacked:
``experts.gate_proj`` / ``up_proj`` ``[E, hidden, inter]``, ``experts.down_proj`` ``[E, inter, hidden]``.

Three ways to run the experts, one result:

* ``gather`` (few tokens, decode): each token reads only its k experts' weight slices, so a batch-1 step reads
  ``k / E`` of the expert bytes;
* ``ragged`` (prefill): the ``N * k`` (token, expert) pairs are sorted by expert and run with
  grouped products over contiguous groups (``lax.ragged_dot``; a block loop on CPU, jaxgen.nn.grouped_matmul),
  reading every used expert once;
* ``dense``: every expert on every token, weighted by a zero-filled ``[N, E]`` matrix (a test oracle only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import LayerSpec
from jaxgen.nn.grouped_matmul import gathered_matmul, grouped_matmul
from jaxgen.nn.layers import ACTIVATIONS, MLP, linear

IMPLS = ("auto", "gather", "ragged", "dense")


def route(logits: Array, top_k: int, normalize: bool) -> tuple[Array, Array]:
    """Router ``logits[N, E]`` -> (float32 weights ``[N, k]``, expert ids ``[N, k]``), as transformers: softmax in
    float32 over all E, then top-k (``lax.top_k``, like ``torch.topk``, orders by value; exact ties go to the lower
    index), then renormalise the k when ``normalize``."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, ids = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, ids


class Experts(nnx.Module):
    """Stacked kernels: ``gate_proj`` / ``up_proj`` ``[E, hidden, inter]``, ``down_proj`` ``[E, inter, hidden]``."""

    def __init__(self, e: int, hidden: int, inter: int, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.gate_proj = nnx.Param(init(rngs.params(), (e, hidden, inter), param_dtype))
        self.up_proj = nnx.Param(init(rngs.params(), (e, hidden, inter), param_dtype))
        self.down_proj = nnx.Param(init(rngs.params(), (e, inter, hidden), param_dtype))


class MoE(nnx.Module):
    """``spec.moe`` experts behind a top-k router (``gate``), plus Qwen2-MoE's sigmoid-gated shared expert."""

    def __init__(self, hidden: int, spec: LayerSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        m = spec.moe
        self.num_experts, self.top_k, self.normalize = m.num_experts, m.top_k, m.norm_topk_prob
        self.activation, self.dtype, self.precision = spec.activation, jnp.dtype(dtype), precision
        self.impl = "auto"  # tests force "gather" / "ragged" / "dense" to compare the paths
        self.gate = linear(hidden, m.num_experts, False, dtype, param_dtype, precision, rngs)
        self.experts = Experts(m.num_experts, hidden, m.intermediate_size, param_dtype, rngs)
        if m.shared_intermediate_size:
            shared = LayerSpec(norm=spec.norm, mlp="gated", activation=spec.activation)
            self.shared_expert = MLP(hidden, m.shared_intermediate_size, shared, dtype=dtype, param_dtype=param_dtype,
                                     precision=precision, rngs=rngs)
            self.shared_expert_gate = linear(hidden, 1, False, dtype, param_dtype, precision, rngs)
        self.shared = bool(m.shared_intermediate_size)

    def _weights(self):
        e = self.experts
        return tuple(w[...].astype(self.dtype) for w in (e.gate_proj, e.up_proj, e.down_proj))

    def __call__(self, x: Array) -> Array:
        """``x[..., hidden]`` -> same shape."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, ids = route(self.gate(flat), self.top_k, self.normalize)
        impl = self.impl
        if impl == "auto":  # static: gather reads N*k expert slices, ragged reads all E once
            impl = "gather" if flat.shape[0] * self.top_k <= self.num_experts else "ragged"
        out = {"gather": self._gather, "ragged": self._ragged, "dense": self._dense}[impl](flat, weights, ids)
        if self.shared:
            gate = jax.nn.sigmoid(self.shared_expert_gate(flat))
            out = out + gate * self.shared_expert(flat)
        return out.reshape(shape)

    def _combine(self, y: Array, weights: Array) -> Array:
        # transformers multiplies each expert's output by its float32 weight, then casts into the sum.
        return (y * weights[..., None]).astype(self.dtype)

    def _gather(self, x: Array, weights: Array, ids: Array) -> Array:
        """Per token, its k experts' slices only (jaxgen.nn.grouped_matmul.gathered_matmul)."""
        act = ACTIVATIONS[self.activation]
        e, p, dt = self.experts, self.precision, self.dtype
        gm = lambda a, w: gathered_matmul(a, w[...], ids, p, dt)  # noqa: E731
        y = gm(act(gm(x, e.gate_proj)) * gm(x, e.up_proj), e.down_proj)
        return jnp.sum(self._combine(y, weights), axis=1)

    def _ragged(self, x: Array, weights: Array, ids: Array) -> Array:
        """(token, expert) pairs sorted by expert, grouped matmuls over the sorted rows, scattered back."""
        act = ACTIVATIONS[self.activation]
        n, k = ids.shape
        flat_ids = ids.reshape(-1)
        order = jnp.argsort(flat_ids, stable=True)
        token = order // k
        sizes = jnp.bincount(flat_ids, length=self.num_experts).astype(jnp.int32)
        wg, wu, wd = self._weights()
        rows = x[token]
        rd = lambda a, w: grouped_matmul(a, w, sizes, self.precision)  # noqa: E731
        y = rd(act(rd(rows, wg)) * rd(rows, wu), wd)
        y = self._combine(y, weights.reshape(-1)[order])
        return jnp.zeros_like(x).at[token].add(y)

    def _dense(self, x: Array, weights: Array, ids: Array) -> Array:
        """Every expert on every token (oracle): ``[N, E]`` weights, zero where not chosen."""
        act = ACTIVATIONS[self.activation]
        dense = jnp.zeros((x.shape[0], self.num_experts), jnp.float32)
        dense = dense.at[jnp.arange(x.shape[0])[:, None], ids].set(weights)
        wg, wu, wd = self._weights()
        p = self.precision
        h = act(jnp.einsum("nh,ehi->nei", x, wg, precision=p)) * jnp.einsum("nh,ehi->nei", x, wu, precision=p)
        y = jnp.einsum("nei,eih->neh", h, wd, precision=p)
        return jnp.sum(self._combine(y, dense), axis=1)

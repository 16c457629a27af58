"""Mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3, gpt-oss) with transformers' routing numerics.

Routing (``MixtralTopKRouter`` / ``Qwen2MoeTopKRouter``): logits ``x @ gate``, softmax over all experts in float32,
top-k of the probabilities, optionally renormalised over the k chosen. DeepSeek-V3 (``DeepseekV3TopkRouter``):
float32 sigmoid scores, experts chosen by score plus ``e_score_correction_bias`` within the best groups, weighted by
the plain scores (:func:`route_grouped`). gpt-oss: a biased router, softmax over the top-k logits
(:func:`route_topk_softmax`), experts with biases and a clamped SwiGLU. Gemma 4 (``Gemma4TextRouter``): the
softmax router reads a scale-free RMS norm of its input times ``router_scale / sqrt(hidden)``, and the renormalised
top-k weights are multiplied by ``per_expert_scale``. Experts are SwiGLU MLPs stored stacked:
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
from jaxgen.nn.layers import ACTIVATIONS, MLP, linear, rms_normalize

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


def route_grouped(logits: Array, bias: Array, top_k: int, n_group: int, topk_group: int, normalize: bool,
                  scale: float) -> tuple[Array, Array]:
    """DeepSeek-V3's router: ``logits[N, E]`` and ``bias[E]`` -> (float32 weights ``[N, k]``, expert ids ``[N, k]``).

    Scores are ``sigmoid(logits)``; the choice uses ``scores + bias``: the ``topk_group`` of ``n_group`` groups whose
    two best experts sum highest, then the top ``top_k`` experts inside them. Weights are the chosen plain scores,
    renormalised (``+ 1e-20``, as transformers) when ``normalize``, times ``scale`` (routed_scaling_factor)."""
    n, e = logits.shape
    scores = jax.nn.sigmoid(logits.astype(jnp.float32))
    choice = scores + bias.astype(jnp.float32)
    if n_group > 1:
        groups = choice.reshape(n, n_group, e // n_group)
        group_scores = jnp.sum(jax.lax.top_k(groups, 2)[0], axis=-1)  # [N, G]
        _, best = jax.lax.top_k(group_scores, topk_group)
        keep = jnp.zeros((n, n_group), bool).at[jnp.arange(n)[:, None], best].set(True)
        choice = jnp.where(keep[:, :, None], groups, -jnp.inf).reshape(n, e)
    _, ids = jax.lax.top_k(choice, top_k)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    if normalize:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    return weights * scale, ids


def route_topk_softmax(logits: Array, top_k: int) -> tuple[Array, Array]:
    """gpt-oss's router: the top-k of ``logits[N, E]`` (``lax.top_k`` orders like ``torch.topk``), softmax over those
    k in the logits' dtype -> (float32 weights ``[N, k]``, ids ``[N, k]``)."""
    values, ids = jax.lax.top_k(logits, top_k)
    return jax.nn.softmax(values, axis=-1).astype(jnp.float32), ids


class Experts(nnx.Module):
    """Stacked kernels: ``gate_proj`` / ``up_proj`` ``[E, hidden, inter]``, ``down_proj`` ``[E, inter, hidden]``;
    with ``bias`` (gpt-oss) also ``{gate,up}_proj_bias [E, inter]`` and ``down_proj_bias [E, hidden]``."""

    def __init__(self, e: int, hidden: int, inter: int, param_dtype, rngs: nnx.Rngs, bias: bool = False):
        init = nnx.initializers.normal(0.02)
        self.gate_proj = nnx.Param(init(rngs.params(), (e, hidden, inter), param_dtype))
        self.up_proj = nnx.Param(init(rngs.params(), (e, hidden, inter), param_dtype))
        self.down_proj = nnx.Param(init(rngs.params(), (e, inter, hidden), param_dtype))
        if bias:
            self.gate_proj_bias = nnx.Param(jnp.zeros((e, inter), param_dtype))
            self.up_proj_bias = nnx.Param(jnp.zeros((e, inter), param_dtype))
            self.down_proj_bias = nnx.Param(jnp.zeros((e, hidden), param_dtype))


class MoE(nnx.Module):
    """``spec.moe`` experts behind a top-k router (``gate``), plus Qwen2-MoE's sigmoid-gated shared expert or
    DeepSeek-V3's ungated ``shared_experts`` (transformers' names for each)."""

    def __init__(self, hidden: int, spec: LayerSpec, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        m = spec.moe
        self.spec = m
        self.num_experts, self.top_k, self.normalize = m.num_experts, m.top_k, m.norm_topk_prob
        self.activation, self.dtype, self.precision = spec.activation, jnp.dtype(dtype), precision
        self.impl = "auto"  # tests force "gather" / "ragged" / "dense" to compare the paths
        self.gate = linear(hidden, m.num_experts, m.router_bias, dtype, param_dtype, precision, rngs)
        if m.scoring == "sigmoid":  # DeepSeek-V3: a buffer transformers saves as mlp.gate.e_score_correction_bias
            self.gate.e_score_correction_bias = nnx.Param(jnp.zeros((m.num_experts,), param_dtype))
        if m.scoring == "gemma4":  # transformers' router.scale and router.per_expert_scale
            self.router_scale = nnx.Param(jnp.ones((hidden,), param_dtype))
            self.per_expert_scale = nnx.Param(jnp.ones((m.num_experts,), param_dtype))
            self.router_eps = spec.norm.eps
        self.experts = Experts(m.num_experts, hidden, m.intermediate_size, param_dtype, rngs, bias=m.expert_bias)
        self.bias = m.expert_bias
        self.shared, self.shared_gate = bool(m.shared_intermediate_size), m.shared_gate
        if self.shared:
            shared = LayerSpec(norm=spec.norm, mlp="gated", activation=spec.activation)
            mlp = MLP(hidden, m.shared_intermediate_size, shared, dtype=dtype, param_dtype=param_dtype,
                      precision=precision, rngs=rngs)
            if self.shared_gate:
                self.shared_expert = mlp
                self.shared_expert_gate = linear(hidden, 1, False, dtype, param_dtype, precision, rngs)
            else:
                self.shared_experts = mlp

    def _route(self, x: Array) -> tuple[Array, Array]:
        m = self.spec
        if m.scoring == "softmax":
            return route(self.gate(x), self.top_k, self.normalize)
        if m.scoring == "topk_softmax":
            return route_topk_softmax(self.gate(x), self.top_k)
        if m.scoring == "gemma4":  # the norm casts back to the compute dtype before the scales, as transformers
            scaled = rms_normalize(x, self.router_eps).astype(x.dtype) * self.router_scale[...].astype(x.dtype)
            weights, ids = route(self.gate(scaled * x.shape[-1] ** -0.5), self.top_k, True)
            return weights * self.per_expert_scale[...].astype(jnp.float32)[ids], ids
        # DeepSeek-V3 keeps the router in float32 whatever the model's dtype (transformers' _keep_in_fp32_modules).
        logits = jnp.dot(x.astype(jnp.float32), self.gate.kernel[...].astype(jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)
        return route_grouped(logits, self.gate.e_score_correction_bias[...], self.top_k, m.n_group, m.topk_group,
                             self.normalize, m.routed_scaling_factor)

    def _weights(self):
        e = self.experts
        return tuple(w[...].astype(self.dtype) for w in (e.gate_proj, e.up_proj, e.down_proj))

    def __call__(self, x: Array, route_x: Array | None = None) -> Array:
        """``x[..., hidden]`` -> same shape. ``route_x`` (same shape): what the router reads, when not ``x``
        (Gemma 4 routes the residual stream and runs the experts on its own pre-norm of it)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, ids = self._route(flat if route_x is None else route_x.reshape(-1, shape[-1]))
        impl = self.impl
        if impl == "auto":  # static: gather reads N*k expert slices, ragged reads all E once
            impl = "gather" if flat.shape[0] * self.top_k <= self.num_experts else "ragged"
        out = {"gather": self._gather, "ragged": self._ragged, "dense": self._dense}[impl](flat, weights, ids)
        if self.shared and self.shared_gate:
            gate = jax.nn.sigmoid(self.shared_expert_gate(flat))
            out = out + gate * self.shared_expert(flat)
        elif self.shared:
            out = out + self.shared_experts(flat)
        return out.reshape(shape)

    def _glu(self, gate: Array, up: Array) -> Array:
        """``act(gate) * up``, or gpt-oss's clamped SwiGLU ``(clip(up, ±limit) + 1) * g * sigmoid(alpha * g)`` with
        ``g = min(gate, limit)``."""
        limit = self.spec.swiglu_limit
        if limit is None:
            return ACTIVATIONS[self.activation](gate) * up
        gate = jnp.minimum(gate, limit)
        up = jnp.clip(up, -limit, limit)
        return (up + 1) * (gate * jax.nn.sigmoid(gate * self.spec.swiglu_alpha))

    def _bias(self, name: str, ids: Array) -> Array | float:
        """Expert bias ``name`` of each expert in ``ids`` (``[..., out]``), or 0 without biases."""
        if not self.bias:
            return 0.0
        return getattr(self.experts, name)[...].astype(self.dtype)[ids]

    def _combine(self, y: Array, weights: Array) -> Array:
        # transformers multiplies each expert's output by its float32 weight, then casts into the sum.
        return (y * weights[..., None]).astype(self.dtype)

    def _gather(self, x: Array, weights: Array, ids: Array) -> Array:
        """Per token, its k experts' slices only (jaxgen.nn.grouped_matmul.gathered_matmul)."""
        e, p, dt = self.experts, self.precision, self.dtype
        gm = lambda a, w, b: gathered_matmul(a, w[...], ids, p, dt) + self._bias(b, ids)  # noqa: E731
        h = self._glu(gm(x, e.gate_proj, "gate_proj_bias"), gm(x, e.up_proj, "up_proj_bias"))
        y = gm(h, e.down_proj, "down_proj_bias")
        return jnp.sum(self._combine(y, weights), axis=1)

    def _ragged(self, x: Array, weights: Array, ids: Array) -> Array:
        """(token, expert) pairs sorted by expert, grouped matmuls over the sorted rows, scattered back."""
        n, k = ids.shape
        flat_ids = ids.reshape(-1)
        order = jnp.argsort(flat_ids, stable=True)
        token, expert = order // k, flat_ids[order]
        sizes = jnp.bincount(flat_ids, length=self.num_experts).astype(jnp.int32)
        wg, wu, wd = self._weights()
        rows = x[token]
        rd = lambda a, w, b: grouped_matmul(a, w, sizes, self.precision) + self._bias(b, expert)  # noqa: E731
        y = rd(self._glu(rd(rows, wg, "gate_proj_bias"), rd(rows, wu, "up_proj_bias")), wd, "down_proj_bias")
        y = self._combine(y, weights.reshape(-1)[order])
        return jnp.zeros_like(x).at[token].add(y)

    def _dense(self, x: Array, weights: Array, ids: Array) -> Array:
        """Every expert on every token (oracle): ``[N, E]`` weights, zero where not chosen."""
        dense = jnp.zeros((x.shape[0], self.num_experts), jnp.float32)
        dense = dense.at[jnp.arange(x.shape[0])[:, None], ids].set(weights)
        wg, wu, wd = self._weights()
        p, every = self.precision, jnp.arange(self.num_experts)
        h = self._glu(jnp.einsum("nh,ehi->nei", x, wg, precision=p) + self._bias("gate_proj_bias", every),
                      jnp.einsum("nh,ehi->nei", x, wu, precision=p) + self._bias("up_proj_bias", every))
        y = jnp.einsum("nei,eih->neh", h, wd, precision=p) + self._bias("down_proj_bias", every)
        return jnp.sum(self._combine(y, dense), axis=1)

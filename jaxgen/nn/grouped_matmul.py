"""Grouped matrix products for mixture-of-experts layers: rows sorted by expert times each row's expert's weights.

``jax.lax.ragged_dot`` is the op for this, and accelerators lower it to a grouped kernel; XLA:CPU lowers it to one
dense product per group over all rows (``E`` times the work: 140 ms for a 32-token prefill of a 64-expert layer
on this 2-core machine). On CPU, :func:`blocked` loops over fixed-size row blocks instead, each block reading one
expert's weights (14 ms for the same layer). Both give the same result up to float32 summation order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

BLOCK_ROWS = 8  # rows per block on CPU: enough for a small GEMM, little padding per expert (measured 8-32 alike)


def grouped_matmul(rows: Array, weights: Array, sizes: Array, precision=None, impl: str = "auto") -> Array:
    """``rows[M, in]`` (sorted by expert; ``sizes[E]`` rows each, summing to M) times ``weights[E, in, out]`` ->
    ``[M, out]``: row ``m`` of group ``e`` is ``rows[m] @ weights[e]``. ``impl``: ``ragged`` (``lax.ragged_dot``),
    ``blocked`` (the CPU loop), or ``auto`` (blocked on the CPU backend, ragged elsewhere)."""
    if impl == "auto":
        impl = "blocked" if jax.default_backend() == "cpu" else "ragged"
    if impl == "ragged":
        return jax.lax.ragged_dot(rows, weights, sizes, precision=precision)
    if impl != "blocked":
        raise ValueError(f"grouped_matmul impl must be auto, ragged or blocked, not {impl!r}")
    return blocked(rows, weights, sizes, precision)


def blocked(rows: Array, weights: Array, sizes: Array, precision=None, block: int = BLOCK_ROWS) -> Array:
    """:func:`grouped_matmul` as a loop over blocks of ``block`` rows that each belong to one expert.

    Each expert's group is cut into ``ceil(size / block)`` blocks (the last one partly masked), so the loop runs
    ``sum(ceil(sizes / block))`` times (at most ``M / block + E``) and reads each used expert's weights once per
    block: only the chosen experts are read, unlike a dense product over all of them.
    """
    m, e = rows.shape[0], weights.shape[0]
    out_dim = weights.shape[-1]
    sizes = sizes.astype(jnp.int32)
    starts = jnp.cumsum(sizes) - sizes                 # first sorted row of each expert
    blocks = (sizes + block - 1) // block              # blocks per expert
    first_block = jnp.cumsum(blocks) - blocks          # index of each expert's first block
    total = jnp.sum(blocks)
    ids = jnp.arange(m // block + e)                   # a static bound on the number of blocks
    expert = jnp.clip(jnp.searchsorted(first_block + blocks, ids, side="right"), 0, e - 1)
    offset = starts[expert] + (ids - first_block[expert]) * block
    count = jnp.clip(starts[expert] + sizes[expert] - offset, 0, block)
    padded = jnp.concatenate([rows, jnp.zeros((block, rows.shape[1]), rows.dtype)])
    out = jnp.zeros((m + block, out_dim), jnp.result_type(rows.dtype, weights.dtype))
    keep = jnp.arange(block)[:, None]

    def body(i, out):
        x = jax.lax.dynamic_slice_in_dim(padded, offset[i], block, 0)
        w = jax.lax.dynamic_index_in_dim(weights, expert[i], 0, keepdims=False)
        y = jnp.where(keep < count[i], jnp.dot(x, w, precision=precision), 0)
        # Rows past `count` belong to the next expert's block: add zeros there instead of overwriting.
        cur = jax.lax.dynamic_slice_in_dim(out, offset[i], block, 0)
        return jax.lax.dynamic_update_slice_in_dim(out, cur + y.astype(out.dtype), offset[i], 0)

    return jax.lax.fori_loop(0, total, body, out)[:m]


UNROLL_PAIRS = 64  # (token, expert) pairs up to which CPU decode slices each expert instead of gathering


def gathered_matmul(x: Array, weights: Array, ids: Array, precision=None, dtype=None) -> Array:
    """Each token times each of its experts: ``x[N, in]`` (or ``[N, k, in]``, one row per pair) and
    ``weights[E, in, out]`` with ``ids[N, k]`` -> ``[N, k, out]``; only the chosen experts' weights are read.

    On CPU, up to :data:`UNROLL_PAIRS` pairs, each pair slices its expert (a contiguous copy) and runs one product:
    XLA:CPU's gather of ``[N, k, in, out]`` moves one element at a time (1.6x slower measured at batch 1). Elsewhere,
    and for more pairs, one gather and a batched product. ``dtype``: the compute dtype weights are cast to.
    """
    n, k = ids.shape
    cast = (lambda w: w) if dtype is None else (lambda w: w.astype(dtype))  # noqa: E731
    if jax.default_backend() == "cpu" and n * k <= UNROLL_PAIRS:
        outs = []
        for t in range(n):
            for j in range(k):
                row = x[t] if x.ndim == 2 else x[t, j]
                w = cast(jax.lax.dynamic_index_in_dim(weights, ids[t, j], 0, keepdims=False))
                outs.append(jnp.dot(row, w, precision=precision))
        return jnp.stack(outs).reshape(n, k, -1)
    w = cast(weights[ids])  # gather before the cast, so only the k slices are read
    spec = "nh,nkho->nko" if x.ndim == 2 else "nkh,nkho->nko"
    return jnp.einsum(spec, x, w, precision=precision)

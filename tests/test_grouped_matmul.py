"""jaxgen.nn.grouped_matmul: the CPU block loop equals ``lax.ragged_dot`` (and a per-row numpy product) for any
group sizes, empty groups and one-group-takes-all included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from jaxgen.nn.grouped_matmul import blocked, grouped_matmul

E, IN, OUT = 5, 6, 7


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(0, 13), min_size=E, max_size=E), st.sampled_from([1, 3, 8]))
def test_blocked_equals_ragged_dot_and_numpy(sizes, block):
    m = sum(sizes)
    if m == 0:
        sizes[0], m = 1, 1
    r = np.random.default_rng(m)
    rows = r.normal(size=(m, IN)).astype(np.float32)
    w = r.normal(size=(E, IN, OUT)).astype(np.float32)
    group = np.repeat(np.arange(E), sizes)
    want = np.einsum("mi,mio->mo", rows, w[group])
    s = jnp.asarray(sizes, jnp.int32)
    hi = jax.lax.Precision.HIGHEST
    got = jax.jit(blocked, static_argnames=("precision", "block"))(jnp.asarray(rows), jnp.asarray(w), s, hi, block=block)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    rag = grouped_matmul(jnp.asarray(rows), jnp.asarray(w), s, hi, impl="ragged")
    np.testing.assert_allclose(np.asarray(got), np.asarray(rag), rtol=1e-5, atol=1e-5)

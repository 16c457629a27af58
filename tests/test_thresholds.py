"""The sort-free top-k / top-p / typical-p cuts (``jaxgen.decode.thresholds``) against a stable-sort reference on whole
vocabularies: many ties, per-row settings, ``min_tokens_to_keep``, extreme and signed-zero scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jaxgen.decode import extra_processors as X
from jaxgen.decode import processors as P
from jaxgen.decode import thresholds as T

LEVELS = np.array([-np.inf, -1e30, -7.5, -3.0, -0.0, 0.0, 0.25, 1.0, 2.5, 1e30], np.float32)


def logits(seed: int, rows: int, vocab: int, tied: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if tied:
        x = rng.choice(LEVELS[2:-1], size=(rows, vocab)).astype(np.float32)
        x[rng.random((rows, vocab)) < 0.2] = -np.inf
    else:
        x = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    x[:, rng.integers(vocab)] = 1.0  # a finite score in every row
    return x


def reference_top_p(x: np.ndarray, p: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """transformers' rule on a stable ascending sort; also the distance of each cumulative value to 1 - p."""
    kept, gap = np.ones_like(x, bool), np.full(x.shape[0], np.inf)
    for r in range(x.shape[0]):
        order = np.argsort(x[r], kind="stable")
        z = x[r, order].astype(np.float64)
        e = np.exp(z - z.max())
        cumulative = np.cumsum(e / e.sum())
        remove = cumulative <= 1 - np.float64(np.float32(p[r]))
        remove[len(z) - keep:] = False
        kept[r, order] = ~remove
        gap[r] = np.min(np.abs(cumulative - (1 - np.float64(np.float32(p[r])))))
    return kept, gap


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 20), vocab=st.sampled_from([17, 300, 5000]), tied=st.booleans(),
       keep=st.sampled_from([1, 2, 5]), per_row=st.booleans())
def test_top_p_equals_a_stable_sort_on_whole_vocabularies(seed, vocab, tied, keep, per_row):
    x = logits(seed, 4, vocab, tied)
    rng = np.random.default_rng(seed + 1)
    p = rng.uniform(0.05, 0.999, 4).astype(np.float32) if per_row else np.full(4, rng.uniform(0.05, 0.999),
                                                                                  np.float32)
    ref, gap = reference_top_p(x, p, keep)
    assume(np.all(gap > 1e-5))  # float32 rounding of the cumulative sum could decide these
    top_p = jnp.asarray(p) if per_row else jnp.float32(p[0])
    ours = jax.jit(P.apply_top_p, static_argnums=2)(jnp.asarray(x), top_p, keep)
    np.testing.assert_array_equal(np.isfinite(np.asarray(ours)), ref & np.isfinite(x))
    np.testing.assert_array_equal(np.asarray(ours)[ref], x[ref])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 20), vocab=st.sampled_from([17, 300, 5000]), tied=st.booleans(),
       keep=st.sampled_from([1, 3]))
def test_top_k_equals_a_stable_sort_on_whole_vocabularies(seed, vocab, tied, keep):
    x = logits(seed, 4, vocab, tied)
    k = np.random.default_rng(seed).integers(0, vocab + 3, 4).astype(np.int32)
    ours = np.asarray(jax.jit(P.apply_top_k, static_argnums=2)(jnp.asarray(x), jnp.asarray(k), keep))
    for r in range(4):
        if k[r] == 0:
            np.testing.assert_array_equal(ours[r], x[r])
            continue
        kth = np.sort(x[r])[::-1][min(max(k[r], keep), vocab) - 1]
        np.testing.assert_array_equal(ours[r], np.where(x[r] < kth, -np.inf, x[r]))


def test_order_keys_sort_like_the_floats():
    # (No denormals: XLA:CPU flushes them to zero, in comparisons too.)
    x = np.array([-np.inf, -1e30, -2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, 1e30, np.inf], np.float32)
    keys = np.asarray(T.order_keys(jnp.asarray(x)))
    assert np.all(np.diff(keys[[0, 1, 2, 3, 5, 6, 7, 8, 9]]) > 0)
    assert keys[4] == keys[5]  # -0.0 == 0.0, as the comparison sort sees them


def test_kth_largest_over_the_full_int32_range():
    # Keys at both ends of the float range: the bracket spans more than 2**31 (hi - lo overflows int32).
    x = jnp.asarray([[-np.inf, 3.4e38, -3.4e38, 0.0, np.inf]], jnp.float32)
    keys = T.order_keys(x)
    for k, want in [(1, np.inf), (2, 3.4e38), (3, 0.0), (4, -3.4e38), (5, -np.inf)]:
        got = T.kth_largest_key(keys, jnp.int32(k))
        assert int(got[0]) == int(T.order_keys(jnp.asarray([[want]], jnp.float32))[0, 0]), k


def test_top_p_keeps_the_top_token_when_even_the_total_is_below_the_cut():
    # 1 - top_p rounds to 1.0 in float32: every cumulative value is <= it; only min_tokens_to_keep saves tokens,
    # the highest id first among tied top scores (the end of the stable ascending order).
    x = jnp.asarray([[1.0, 2.0, 2.0, 0.0]], jnp.float32)
    np.testing.assert_array_equal(np.isfinite(np.asarray(P.apply_top_p(x, jnp.float32(1e-9), 1))),
                                  [[False, False, True, False]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(P.apply_top_p(x, jnp.float32(1e-9), 2))),
                                  [[False, True, True, False]])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 20), vocab=st.sampled_from([17, 300, 5000]), tied=st.booleans(),
       keep=st.sampled_from([1, 2, 5]), mass=st.floats(0.05, 0.99))
def test_typical_p_equals_transformers_on_whole_vocabularies(seed, vocab, tied, keep, mass):
    import torch
    import transformers

    x = logits(seed, 4, vocab, tied)
    mass = float(np.float32(mass))
    ref = transformers.TypicalLogitsWarper(mass, min_tokens_to_keep=keep)(None, torch.tensor(x)).numpy()
    # The cut is decided by float32 rounding when the cumulative mass lands next to `mass`, or when the
    # surprisal distances around the cut are a rounding apart: leave those cases out.
    normalized = torch.log_softmax(torch.tensor(x), -1)
    shifted = torch.abs(-normalized - torch.nansum(-normalized * normalized.exp(), -1, keepdim=True)).numpy()
    for r in range(4):
        order = np.argsort(shifted[r], kind="stable")
        z = x[r, order].astype(np.float64)
        e = np.exp(z - z.max())
        cumulative = np.cumsum(e / e.sum())
        assume(np.min(np.abs(cumulative - mass)) > 1e-5)
        cut = shifted[r, order][min(int(np.sum(cumulative < mass)), vocab - 1)]
        assume(np.all((shifted[r] == cut) | (np.abs(shifted[r] - cut) > 1e-4)))
        # Which of the tokens tied at the `min_tokens_to_keep` boundary survive is decided by torch.sort,
        # which is not stable (ids 9, 15, 16 tied come out 16, 15, 9); jaxgen keeps the lower ids. Leave out
        # the rows where that choice shows: a tie across the boundary above the cut.
        ascending = shifted[r, order]
        assume(not (keep > 1 and ascending[keep] == ascending[keep - 1] > cut))
    ours = np.asarray(jax.jit(X.apply_typical, static_argnums=2)(jnp.asarray(x), jnp.float32(mass), keep))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    np.testing.assert_array_equal(ours[np.isfinite(ref)], x[np.isfinite(ref)])


def test_typical_p_per_row_masses():
    x = logits(3, 4, 300, False)
    mass = np.array([0.2, 0.5, 0.9, 1.0], np.float32)  # 1.0: off for that row
    ours = np.asarray(jax.jit(X.apply_typical)(jnp.asarray(x), jnp.asarray(mass)))
    for r in range(4):
        alone = np.asarray(jax.jit(X.apply_typical)(jnp.asarray(x[r:r + 1]), jnp.float32(mass[r])))
        np.testing.assert_array_equal(ours[r:r + 1], alone)
    np.testing.assert_array_equal(ours[3], x[3])
    assert np.sum(np.isfinite(ours[0])) < np.sum(np.isfinite(ours[1])) < np.sum(np.isfinite(ours[2])) < 300

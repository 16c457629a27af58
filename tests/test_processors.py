"""Processors and token choice on hand-made logits: the same kept sets and values as transformers' processors.

Logits are drawn from a handful of values so that ties are common. Where two float implementations may round a
boundary comparison differently (top-p's cumulative sum against ``1 - p``, min-p's ``p < min_p * max``), examples
closer than 1e-6 to the boundary are skipped; exact boundary cases are covered by hand with exactly representable
probabilities instead.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
                          RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from jaxgen.decode import processors as P
from jaxgen.decode.logprobs import token_and_top_logprobs
from jaxgen.decode.loop import seen_tokens
from jaxgen.decode.sampling import greedy
from jaxgen.decode.sampling import sample_from_uniform as _sample_from_uniform

# torch's CPU sort is stable only up to 16 elements (insertion sort); beyond that its order among equal values
# is an implementation detail, so top-p tie-breaking at the cut is compared on vocabularies of at most 16.
V = 16
B = 3
VALUES = [-np.inf, -3.0, -1.5, -1.0, 0.0, 0.5, 1.0, 2.0]

top_k_fn = jax.jit(P.apply_top_k)
top_p_fn = jax.jit(P.apply_top_p)
min_p_fn = jax.jit(P.apply_min_p)
rep_fn = jax.jit(P.apply_repetition_penalty)
sample_from_uniform = jax.jit(_sample_from_uniform)


@st.composite
def tied_logits(draw, vocab: int = V) -> np.ndarray:
    """float32 [B, vocab] from a few values (many ties, some -inf), at least one finite value per row."""
    x = draw(hnp.arrays(np.float32, (B, vocab), elements=st.sampled_from(VALUES)))
    col = draw(st.integers(0, vocab - 1))
    x[:, col] = np.where(np.isfinite(x[:, col]), x[:, col], 0.0)
    return x


def kept(x) -> np.ndarray:
    """Which entries survived a filter (not -inf)."""
    return np.isfinite(np.asarray(x))


def hf(processor, scores: np.ndarray, input_ids: np.ndarray | None = None) -> np.ndarray:
    ids = torch.zeros((scores.shape[0], 1), dtype=torch.long) if input_ids is None else torch.tensor(input_ids)
    return processor(ids, torch.tensor(scores)).numpy()


# ----------------------------------------------------------------------------------------------------- top-k

@settings(max_examples=80, deadline=None)
@given(x=tied_logits(), k=st.integers(1, V + 3))
def test_top_k_keeps_transformers_set(x, k):
    ours = top_k_fn(x, jnp.int32(k))
    ref = hf(TopKLogitsWarper(top_k=k), x)
    np.testing.assert_array_equal(kept(ours), kept(ref))
    np.testing.assert_array_equal(np.asarray(ours)[kept(ref)], ref[kept(ref)])


def test_top_k_ties_at_kth_value_survive_and_zero_disables():
    x = np.array([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(kept(top_k_fn(x, jnp.int32(2))), [[True, False, True, True, True, False]])
    np.testing.assert_array_equal(kept(top_k_fn(x, jnp.int32(1))), [[True, False, False, False, False, False]])
    np.testing.assert_array_equal(np.asarray(top_k_fn(x, jnp.int32(0))), x)


# ----------------------------------------------------------------------------------------------------- top-p

def _torch_cumulative(x: np.ndarray) -> np.ndarray:
    s = torch.sort(torch.tensor(x), descending=False).values
    return s.softmax(dim=-1).cumsum(dim=-1).numpy()


@settings(max_examples=80, deadline=None)
@given(x=tied_logits(), p=st.floats(0.01, 1.0))
def test_top_p_keeps_transformers_set(x, p):
    p = float(np.float32(p))
    # Skip examples where float rounding of the cumulative sum decides the boundary (gap shown in the assume).
    assume(np.all(np.abs(_torch_cumulative(x) - (1 - p)) > 1e-6))
    ours = top_p_fn(x, jnp.float32(p))
    ref = hf(TopPLogitsWarper(top_p=p), x)
    np.testing.assert_array_equal(kept(ours), kept(ref))
    np.testing.assert_array_equal(np.asarray(ours)[kept(ref)], ref[kept(ref)])


def test_top_p_exact_boundaries_and_ties():
    # Four equal logits: probabilities 1/4 exactly, cumulative 1/4, 1/2, 3/4, 1 exactly.
    x = np.array([[0.0, 0.0, 0.0, 0.0, -np.inf, -np.inf]], np.float32)
    for p, n_kept in [(0.5, 2), (0.75, 3), (0.74, 3), (0.76, 4), (0.25, 1), (0.2, 1), (1.0, 4)]:
        ours, ref = top_p_fn(x, jnp.float32(p)), hf(TopPLogitsWarper(top_p=p), x)
        np.testing.assert_array_equal(kept(ours), kept(ref), err_msg=f"top_p={p}")
        assert kept(ours).sum() == n_kept, p
    # Ties are cut in (stable) ascending sort order, as transformers' CPU sort for <= 16 tokens: the highest ids
    # of the tied group survive.
    np.testing.assert_array_equal(kept(top_p_fn(x, jnp.float32(0.5))), [[False, False, True, True, False, False]])
    # The most likely token always survives, even with a tiny top_p.
    y = np.array([[0.0, 5.0, 1.0]], np.float32)
    np.testing.assert_array_equal(kept(top_p_fn(y, jnp.float32(1e-6))), [[False, True, False]])


# ----------------------------------------------------------------------------------------------------- min-p

@settings(max_examples=60, deadline=None)
@given(x=tied_logits(), min_p=st.floats(0.0, 1.0))
def test_min_p_keeps_transformers_set(x, min_p):
    min_p = float(np.float32(min_p))
    probs = torch.softmax(torch.tensor(x), -1).numpy()
    threshold = min_p * probs.max(-1, keepdims=True)
    assume(np.all((np.abs(probs - threshold) > 1e-6 * threshold) | (probs == probs.max(-1, keepdims=True))
                  | (threshold == 0)))
    ours = min_p_fn(x, jnp.float32(min_p))
    ref = hf(MinPLogitsWarper(min_p=min_p), x)
    np.testing.assert_array_equal(kept(ours), kept(ref))
    np.testing.assert_array_equal(np.asarray(ours)[kept(ref)], ref[kept(ref)])


def test_min_p_hand_made():
    # probabilities 1/2, 1/4, 1/8, 1/8 (exact); min_p = 0.5 keeps those >= 1/4.
    x = np.log(np.array([[0.5, 0.25, 0.125, 0.125]], np.float32))
    ours = min_p_fn(x, jnp.float32(0.5))
    np.testing.assert_array_equal(kept(ours), kept(hf(MinPLogitsWarper(min_p=0.5), x)))
    np.testing.assert_array_equal(kept(ours), [[True, True, False, False]])
    np.testing.assert_array_equal(kept(min_p_fn(x, jnp.float32(1.0))), [[True, False, False, False]])
    np.testing.assert_array_equal(np.asarray(min_p_fn(x, jnp.float32(0.0))), x)


# ---------------------------------------------------------------------------------------- repetition penalty

@settings(max_examples=50, deadline=None)
@given(x=hnp.arrays(np.float32, (B, V), elements=st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.75, 3.0])),
       ids=hnp.arrays(np.int64, (B, 6), elements=st.integers(0, V - 1)),
       pads=hnp.arrays(np.int64, (B,), elements=st.integers(0, 5)),
       penalty=st.sampled_from([0.5, 0.9, 1.3, 2.0]))
def test_repetition_penalty_matches_transformers_ignoring_left_padding(x, ids, pads, penalty):
    mask = (np.arange(ids.shape[1])[None, :] >= pads[:, None]).astype(np.int32)
    seen = seen_tokens(jnp.asarray(ids, jnp.int32), jnp.asarray(mask), V)
    ours = np.asarray(rep_fn(x, seen, jnp.float32(penalty)))
    # transformers 5.x: generate passes prompt_ignore_length = number of leading padding tokens per row.
    padding_lengths = torch.tensor((mask != 0).argmax(axis=1))
    ref = hf(RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=padding_lengths), x, ids)
    np.testing.assert_array_equal(ours, ref)


def test_repetition_penalty_hand_made():
    x = np.array([[2.0, -2.0, 0.0, 1.0]], np.float32)
    seen = np.array([[True, True, True, False]])
    np.testing.assert_array_equal(np.asarray(rep_fn(x, seen, jnp.float32(2.0))), [[1.0, -4.0, 0.0, 1.0]])


# -------------------------------------------------------------------------------------------- min new tokens

@pytest.mark.parametrize("generated", [0, 2, 3, 5])
def test_min_new_tokens_masks_every_eos_until_reached(generated):
    x = np.arange(2 * V, dtype=np.float32).reshape(2, V) / 7.0
    eos = (3, 11)
    ours = np.asarray(P.apply_min_new_tokens(jnp.asarray(x), jnp.int32(generated), jnp.int32(3), eos))
    prompt = 4
    ids = np.zeros((2, prompt + generated), np.int64)
    ref = hf(MinNewTokensLengthLogitsProcessor(prompt, 3, list(eos)), x, ids)
    np.testing.assert_array_equal(ours, ref)
    assert np.isinf(ours[:, list(eos)]).all() == (generated < 3)


# --------------------------------------------------------------------------------- the whole chain, as HF does

@settings(max_examples=50, deadline=None)
@given(x=tied_logits(), temperature=st.sampled_from([0.5, 0.7, 1.0, 1.5]), k=st.integers(0, V),
       p=st.sampled_from([0.3, 0.6, 0.9, 1.0]), min_p=st.sampled_from([None, 0.05, 0.3]),
       penalty=st.sampled_from([1.0, 1.4]))
def test_process_chain_matches_transformers_processor_list(x, temperature, k, p, min_p, penalty):
    ids = np.array([[1, 2, 3], [4, 4, 5], [0, 9, 15]], np.int64)
    procs = []
    if penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty))
    procs.append(MinNewTokensLengthLogitsProcessor(2, 2, [7]))  # 1 token generated < 2: token 7 masked
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if k:
        procs.append(TopKLogitsWarper(k))
    if p < 1.0:
        procs.append(TopPLogitsWarper(p))
    if min_p is not None:
        procs.append(MinPLogitsWarper(min_p))
    ref = hf(LogitsProcessorList(procs), x, ids)
    # the same boundary caveat as above, evaluated on transformers' own intermediate scores
    before_p = hf(LogitsProcessorList(procs[:len(procs) - (min_p is not None) - (p < 1.0)]), x, ids)
    if p < 1.0:
        assume(np.all(np.abs(_torch_cumulative(before_p) - (1 - p)) > 1e-6))
    if min_p is not None:
        before_min_p = hf(LogitsProcessorList(procs[:-1]), x, ids)
        probs = torch.softmax(torch.tensor(before_min_p), -1).numpy()
        threshold = min_p * probs.max(-1, keepdims=True)
        assume(np.all((np.abs(probs - threshold) > 1e-6 * threshold) | (probs == probs.max(-1, keepdims=True))))

    # Every processor compiled in (one program); neutral values (1.0, 0, None) must then be exact no-ops.
    plan = P.ProcessorPlan(repetition_penalty=True, min_new_tokens=True, eos_token_ids=(7,), temperature=True,
                           top_k=True, top_p=True, min_p=True)
    params = P.ProcessorParams(temperature=jnp.float32(temperature), top_k=jnp.int32(k), top_p=jnp.float32(p),
                               min_p=jnp.float32(min_p or 0.0), repetition_penalty=jnp.float32(penalty),
                               min_new_tokens=jnp.int32(2))
    seen = seen_tokens(jnp.asarray(ids, jnp.int32), jnp.ones(ids.shape, jnp.int32), V)
    ours = np.asarray(_process(x, seen, plan, params))
    np.testing.assert_array_equal(kept(ours), kept(ref))
    np.testing.assert_allclose(ours[kept(ref)], ref[kept(ref)], rtol=1e-6)


@functools.partial(jax.jit, static_argnums=2)
def _process(x, seen, plan, params):
    return P.process(x, plan, params, seen=seen, num_generated=jnp.int32(1), do_sample=True)


# ----------------------------------------------------------------------------------------------- token choice

def test_sample_from_uniform_is_the_inverse_cdf():
    # probabilities 1/4, 0, 1/2, 1/4 (exact in float32): CDF 0.25, 0.25, 0.75, 1.
    logits = jnp.log(jnp.asarray([[0.25, 0.0, 0.5, 0.25]], jnp.float32))
    cases = [(0.0, 0), (0.1, 0), (0.2499, 0), (0.2501, 2), (0.5, 2), (0.7499, 2), (0.7501, 3), (0.999999, 3)]
    for u, token in cases:
        assert int(sample_from_uniform(logits, jnp.asarray([u], jnp.float32))[0]) == token, u
    # zero-probability tokens at either end are never drawn, even at u = 0 or u -> 1
    edge = jnp.log(jnp.asarray([[0.0, 0.5, 0.5, 0.0]], jnp.float32))
    assert int(sample_from_uniform(edge, jnp.zeros((1,), jnp.float32))[0]) == 1
    assert int(sample_from_uniform(edge, jnp.full((1,), 1 - 2 ** -24, jnp.float32))[0]) == 2
    # a fine grid of uniforms reproduces the probabilities (each token gets its share of the grid, +-1 point)
    probs = np.array([0.1, 0.0, 0.3, 0.05, 0.55], np.float32)
    grid = (np.arange(10_000, dtype=np.float32) + 0.5) / 10_000
    drawn = np.asarray(sample_from_uniform(jnp.log(jnp.asarray(np.tile(probs, (grid.size, 1)))), jnp.asarray(grid)))
    np.testing.assert_allclose(np.bincount(drawn, minlength=probs.size) / grid.size, probs, atol=2e-4)


def test_greedy_takes_the_first_index_on_ties_like_torch():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [-np.inf, 2.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(greedy(jnp.asarray(x))), torch.tensor(x).argmax(-1).numpy())
    np.testing.assert_array_equal(np.asarray(greedy(jnp.asarray(x))), [1, 1, 0])


def test_top_logprobs_most_likely_first_lower_id_on_ties():
    lp = jax.nn.log_softmax(jnp.asarray([[0.0, 2.0, 1.0, 2.0, 1.0]], jnp.float32))
    chosen, ids, top = token_and_top_logprobs(lp, jnp.asarray([2]), 4)
    np.testing.assert_array_equal(np.asarray(ids), [[1, 3, 2, 4]])
    np.testing.assert_allclose(np.asarray(top), np.asarray(lp)[:, [1, 3, 2, 4]], rtol=0, atol=0)
    assert float(chosen[0]) == float(lp[0, 2])


# ------------------------------------------------------------- sampling filters on the top-k candidate set

@settings(max_examples=60, deadline=None)
@given(x=tied_logits(vocab=64), k=st.integers(0, 12), p=st.sampled_from([0.3, 0.6, 0.9, 1.0]),
       min_p=st.sampled_from([None, 0.05, 0.3]), candidates=st.sampled_from([4, 8, 16]))
def test_candidate_filters_equal_the_whole_vocabulary_path(x, k, p, min_p, candidates):
    # Many ties (8 distinct values over 64 tokens): the k-th score's ties often spill past the candidates, and
    # k may exceed them; the result must then come from the exact fallback, so both paths always agree.
    plan = P.ProcessorPlan(top_k=True, top_p=True, min_p=min_p is not None)
    params = P.ProcessorParams(temperature=jnp.float32(1.0), top_k=jnp.int32(k), top_p=jnp.float32(p),
                               min_p=jnp.float32(min_p or 0.0), repetition_penalty=jnp.float32(1.0),
                               min_new_tokens=jnp.int32(0))
    seen = jnp.zeros((B, 0), bool)
    full = np.asarray(_process(x, seen, plan, params))
    fast = np.asarray(_process(x, seen, dataclasses.replace(plan, top_k_candidates=candidates), params))
    np.testing.assert_array_equal(kept(fast), kept(full))
    np.testing.assert_array_equal(fast[kept(full)], full[kept(full)])


def test_candidate_filters_on_distinct_logits_use_the_candidates():
    # Distinct random logits: no ties, so the fast path runs; it must keep exactly transformers' set.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, 1000)).astype(np.float32) * 3
    plan = P.ProcessorPlan(top_k=True, top_p=True, min_p=True, top_k_candidates=64)
    params = P.ProcessorParams(temperature=jnp.float32(1.0), top_k=jnp.int32(50), top_p=jnp.float32(0.9),
                               min_p=jnp.float32(0.02), repetition_penalty=jnp.float32(1.0),
                               min_new_tokens=jnp.int32(0))
    ours = np.asarray(_process(x, jnp.zeros((B, 0), bool), plan, params))
    ref = hf(LogitsProcessorList([TopKLogitsWarper(50), TopPLogitsWarper(0.9), MinPLogitsWarper(0.02)]), x)
    np.testing.assert_array_equal(kept(ours), kept(ref))
    np.testing.assert_allclose(ours[kept(ref)], ref[kept(ref)], rtol=1e-6)
    assert 1 < kept(ours).sum(-1).min() and kept(ours).sum(-1).max() < 50


def test_candidate_count_buckets():
    assert P.candidate_count(0, 32000) == 0
    assert P.candidate_count(50, 32000) == P.candidate_count(20, 32000) == 64
    assert P.candidate_count(100, 32000) == 128
    assert P.candidate_count(50, 100) == 0  # most of a small vocabulary: sort it whole


@settings(max_examples=15, deadline=None)
@given(rows=st.sampled_from([1, 3, 70]), k=st.sampled_from([1, 5, 64]), seed=st.integers(0, 2 ** 16))
def test_top_k_helper_equals_a_stable_descending_sort(rows, k, seed):
    # One row, unrolled rows and lax.map over rows (> 64) must all give lax.top_k's answer: values descending,
    # the lower index first among ties (values drawn from a few levels, so ties are everywhere).
    from jaxgen.decode.topk import top_k
    x = np.random.default_rng(seed).choice(np.asarray(VALUES[1:], np.float32), size=(rows, 300))
    vals, idx = jax.jit(top_k, static_argnums=1)(jnp.asarray(x), k)
    order = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(idx), order)
    np.testing.assert_array_equal(np.asarray(vals), np.take_along_axis(x, order, -1))
    assert idx.dtype == jnp.int32

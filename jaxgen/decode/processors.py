"""Logits processors as pure functions of ``(scores[B, V], ...)``, with transformers' exact semantics.

Order (transformers' ``_get_logits_processor``): repetition penalty -> min-new-tokens, then only when sampling:
temperature -> top-k -> top-p -> min-p. Every parameter is a traced value; which filters exist is static.
transformers' other processors (sequence bias, n-gram and bad-word bans, forced BOS/EOS, suppression, typical /
epsilon / eta sampling, renormalisation) and vLLM's presence/frequency penalties live in
:mod:`jaxgen.decode.extra_processors`; :func:`process` calls them at their places in that order.

With top-k on, the sampling filters work on the ``top_k_candidates`` best tokens (one ``top_k``) instead of
sorting the whole vocabulary every step; whenever that set could differ from the full computation (top-k off at
run time, ``top_k`` above the candidate count, or ties at the k-th score spilling past it) the full-vocabulary
path runs instead, so the kept set is always exactly transformers'.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

from jaxgen.decode import extra_processors as X
from jaxgen.decode import thresholds as T
from jaxgen.decode.topk import top_k

NEG_INF = -jnp.inf


def per_row(x: Array) -> Array:
    """A setting against ``[B, V]`` scores: a scalar as is, a per-row ``[B]`` setting as ``[B, 1]``."""
    return x[:, None] if jnp.ndim(x) == 1 else x


@struct.dataclass
class ProcessorParams:
    """Traced processor settings (changing them does not recompile). Each field is a scalar (one setting for
    every row) or ``[B]`` (one per row, e.g. :class:`jaxgen.Engine`'s slots); :func:`per_row` broadcasts it."""

    temperature: Array  # f32[]
    top_k: Array  # i32[]  (0 = off)
    top_p: Array  # f32[]  (1.0 = off)
    min_p: Array  # f32[]  (0.0 = off)
    repetition_penalty: Array  # f32[] (1.0 = off)
    min_new_tokens: Array  # i32[]
    extra: X.ExtraParams | None = None  # the processors of jaxgen.decode.extra_processors (plan.extra)


@dataclasses.dataclass(frozen=True)
class ProcessorPlan:
    """Static: which processors exist in the compiled program."""

    repetition_penalty: bool = False
    min_new_tokens: bool = False
    eos_token_ids: tuple[int, ...] = ()
    temperature: bool = False
    top_k: bool = False
    top_p: bool = False
    min_p: bool = False
    min_tokens_to_keep: int = 1
    top_k_candidates: int = 0  # > 0: filter among this many best tokens (see module doc); 0: whole vocabulary
    extra: X.ExtraPlan = X.ExtraPlan()  # transformers' other processors, vLLM's penalties, stop strings


def candidate_count(top_k: int, vocab: int, min_tokens_to_keep: int = 1, minimum: int = 64) -> int:
    """The static candidate count for a ``top_k`` (a power of two >= it, so nearby values share a program);
    0 (whole vocabulary) when top-k is off or the count would be a sizeable share of the vocabulary anyway."""
    if top_k <= 0:
        return 0
    c = max(minimum, 1 << (max(top_k, min_tokens_to_keep) - 1).bit_length())
    return c if 4 * c <= vocab else 0


def apply_repetition_penalty(scores: Array, seen: Array, penalty: Array) -> Array:
    """Divide positive / multiply negative scores of tokens in ``seen: bool[B, V]`` by ``penalty``."""
    penalty = per_row(penalty)
    penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalised, scores)


def apply_min_new_tokens(scores: Array, num_generated: Array, min_new_tokens: Array,
                         eos_token_ids: tuple[int, ...]) -> Array:
    """Forbid every EOS id while fewer than ``min_new_tokens`` tokens have been generated."""
    if not eos_token_ids:
        return scores
    eos = jnp.zeros(scores.shape[-1], bool).at[jnp.asarray(eos_token_ids)].set(True)
    return jnp.where(eos & per_row(num_generated < min_new_tokens), NEG_INF, scores)


def apply_top_k(scores: Array, top_k: Array, min_tokens_to_keep: int = 1) -> Array:
    """Keep tokens scoring at least the k-th best score (ties at the k-th value survive); ``top_k`` 0 = off."""
    vocab = scores.shape[-1]
    k = jnp.clip(jnp.maximum(top_k, min_tokens_to_keep), 1, vocab)
    keys = T.order_keys(scores)
    kth = T.kth_largest_key(keys, k)
    filtered = jnp.where(keys < kth[:, None], NEG_INF, scores)
    return jnp.where(per_row(top_k > 0), filtered, scores)


def apply_top_p(scores: Array, top_p: Array, min_tokens_to_keep: int = 1) -> Array:
    """Nucleus filter: transformers' stable ascending sort, cumulative softmax, drop tokens whose cumulative
    probability is <= 1 - top_p, keep the ``min_tokens_to_keep`` top ones; ties are resolved by token id.
    The cut is found by bisection (:func:`jaxgen.decode.thresholds.nucleus_removed`), not by sorting."""
    remove = T.nucleus_removed(scores, top_p) & ~T.top_ordered_mask(scores, min_tokens_to_keep)
    return jnp.where(remove & per_row(top_p < 1.0), NEG_INF, scores)


def apply_min_p(scores: Array, min_p: Array, min_tokens_to_keep: int = 1) -> Array:
    """Drop tokens whose probability is below ``min_p`` times the largest probability (0 = off)."""
    min_p = per_row(min_p)
    probs = jax.nn.softmax(scores, axis=-1)
    remove = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
    # Never remove the `min_tokens_to_keep` most likely tokens (lower id first on ties, as transformers' stable sort).
    _, top = top_k(scores, min_tokens_to_keep)
    keep_top = jnp.zeros_like(remove).at[jnp.arange(scores.shape[0])[:, None], top].set(True)
    return jnp.where(remove & ~keep_top & (min_p > 0), NEG_INF, scores)


def _filter_candidates(scores: Array, plan: ProcessorPlan, params: ProcessorParams) -> Array:
    """top-k, then top-p / min-p, computed on the ``plan.top_k_candidates`` best tokens; exact fallback otherwise."""
    c, keep_min = plan.top_k_candidates, plan.min_tokens_to_keep
    b, vocab = scores.shape
    vals, ids = top_k(scores, c)  # descending; lower id first on ties
    k = jnp.clip(jnp.maximum(params.top_k, keep_min), 1, vocab)
    if jnp.ndim(k) == 1:  # per-row top_k
        kth = jnp.take_along_axis(vals, jnp.minimum(k, c)[:, None] - 1, axis=1)
    else:
        kth = jax.lax.dynamic_index_in_dim(vals, jnp.minimum(k, c) - 1, axis=1, keepdims=True)
    # Exact only when every token tied with the k-th score is among the candidates (in every row: one path for all).
    fits = jnp.all((params.top_k > 0) & (k <= c)) & jnp.all(jnp.sum(scores >= kth, axis=-1) <= c)
    top_p, min_p = per_row(params.top_p), per_row(params.min_p)

    def on_candidates(scores: Array) -> Array:
        cand = jnp.where(vals < kth, NEG_INF, vals)
        if plan.top_p:
            # transformers' order: ascending score, ties by ascending id (its stable sort over the vocabulary)
            _, _, perm = jax.lax.sort((cand, ids, jnp.broadcast_to(jnp.arange(c), (b, c))), num_keys=2)
            ascending = jnp.take_along_axis(cand, perm, axis=-1)
            cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
            remove_sorted = (cumulative <= 1 - top_p).at[:, c - keep_min:].set(False)
            remove = jnp.zeros_like(remove_sorted).at[jnp.arange(b)[:, None], perm].set(remove_sorted)
            cand = jnp.where(remove & (top_p < 1.0), NEG_INF, cand)
        if plan.min_p:
            probs = jax.nn.softmax(cand, axis=-1)
            remove = (probs < min_p * probs[:, :1]) & (jnp.arange(c) >= keep_min)[None, :]
            cand = jnp.where(remove & (min_p > 0), NEG_INF, cand)
        return jnp.full_like(scores, NEG_INF).at[jnp.arange(b)[:, None], ids].set(cand)

    return jax.lax.cond(fits, on_candidates, lambda s: _filter_vocabulary(s, plan, params), scores)


def _filter_vocabulary(scores: Array, plan: ProcessorPlan, params: ProcessorParams) -> Array:
    if plan.top_k:
        scores = apply_top_k(scores, params.top_k, plan.min_tokens_to_keep)
    if plan.top_p:
        # top_p = 1.0 is off: skip the whole-vocabulary sort at run time (the filter stays in the program, so
        # switching top_p on and off does not recompile).
        scores = jax.lax.cond(jnp.any(params.top_p < 1.0),
                              lambda s: apply_top_p(s, params.top_p, plan.min_tokens_to_keep), lambda s: s, scores)
    if plan.min_p:
        scores = apply_min_p(scores, params.min_p, plan.min_tokens_to_keep)
    return scores


def process(scores: Array, plan: ProcessorPlan, params: ProcessorParams, *, seen: Array | None,
            num_generated: Array, do_sample: bool, context: X.Context | None = None) -> Array:
    """All processors in transformers' order on float32 ``scores[B, V]`` (``context``: the history that
    ``plan.extra``'s n-gram, sequence and count processors read; see :mod:`jaxgen.decode.extra_processors`)."""
    x, xp = plan.extra, params.extra
    scores = X.before_repetition_penalty(scores, x, xp, context)
    if plan.repetition_penalty:
        scores = apply_repetition_penalty(scores, seen, params.repetition_penalty)
    scores = X.after_repetition_penalty(scores, x, xp, context)
    if plan.min_new_tokens:  # also min_length: the host folds it into min_new_tokens
        scores = apply_min_new_tokens(scores, num_generated, params.min_new_tokens, plan.eos_token_ids)
    scores = X.after_min_length(scores, x, xp, context, num_generated, plan.eos_token_ids)
    if do_sample:
        if plan.temperature:
            scores = scores / per_row(params.temperature)
        if plan.top_k and plan.top_k_candidates:
            scores = _filter_candidates(scores, plan, params)
        else:
            scores = _filter_vocabulary(scores, plan, params)
        scores = X.after_sampling_filters(scores, x, xp, plan.min_tokens_to_keep)
    return X.last(scores, x)

"""Logits processors as pure functions of ``(scores[B, V], ...)``, with transformers' exact semantics.

Order (transformers' ``_get_logits_processor``): repetition penalty -> min-new-tokens, then only when sampling:
temperature -> top-k -> top-p -> min-p. Every parameter is a traced value; which filters exist is static.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

NEG_INF = -jnp.inf


@struct.dataclass
class ProcessorParams:
    """Traced processor settings (changing them does not recompile)."""

    temperature: Array  # f32[]
    top_k: Array  # i32[]  (0 = off)
    top_p: Array  # f32[]  (1.0 = off)
    min_p: Array  # f32[]  (0.0 = off)
    repetition_penalty: Array  # f32[] (1.0 = off)
    min_new_tokens: Array  # i32[]


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


def apply_repetition_penalty(scores: Array, seen: Array, penalty: Array) -> Array:
    """Divide positive / multiply negative scores of tokens in ``seen: bool[B, V]`` by ``penalty``."""
    penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalised, scores)


def apply_min_new_tokens(scores: Array, num_generated: Array, min_new_tokens: Array,
                         eos_token_ids: tuple[int, ...]) -> Array:
    """Forbid every EOS id while fewer than ``min_new_tokens`` tokens have been generated."""
    if not eos_token_ids:
        return scores
    eos = jnp.zeros(scores.shape[-1], bool).at[jnp.asarray(eos_token_ids)].set(True)
    return jnp.where(eos & (num_generated < min_new_tokens), NEG_INF, scores)


def apply_top_k(scores: Array, top_k: Array, min_tokens_to_keep: int = 1) -> Array:
    """Keep tokens scoring at least the k-th best score (ties at the k-th value survive); ``top_k`` 0 = off."""
    vocab = scores.shape[-1]
    k = jnp.clip(jnp.maximum(top_k, min_tokens_to_keep), 1, vocab)
    kth = jnp.take_along_axis(jnp.sort(scores, axis=-1), jnp.full(scores.shape[:-1] + (1,), vocab) - k, axis=-1)
    filtered = jnp.where(scores < kth, NEG_INF, scores)
    return jnp.where(top_k > 0, filtered, scores)


def apply_top_p(scores: Array, top_p: Array, min_tokens_to_keep: int = 1) -> Array:
    """Nucleus filter: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p, keep the top ones.

    The sort is stable, like transformers' CPU sort, so ties are resolved by token id.
    """
    order = jnp.argsort(scores, axis=-1, stable=True)
    sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
    remove_sorted = cumulative <= 1 - top_p
    vocab = scores.shape[-1]
    remove_sorted = remove_sorted.at[..., vocab - min_tokens_to_keep:].set(False)
    remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(remove_sorted)
    return jnp.where(remove & (top_p < 1.0), NEG_INF, scores)


def apply_min_p(scores: Array, min_p: Array, min_tokens_to_keep: int = 1) -> Array:
    """Drop tokens whose probability is below ``min_p`` times the largest probability (0 = off)."""
    probs = jax.nn.softmax(scores, axis=-1)
    remove = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
    # Never remove the `min_tokens_to_keep` most likely tokens (stable descending order, as transformers).
    order = jnp.argsort(-scores, axis=-1, stable=True)
    keep_top = jnp.zeros_like(remove).at[jnp.arange(scores.shape[0])[:, None], order[:, :min_tokens_to_keep]].set(True)
    return jnp.where(remove & ~keep_top & (min_p > 0), NEG_INF, scores)


def process(scores: Array, plan: ProcessorPlan, params: ProcessorParams, *, seen: Array | None,
            num_generated: Array, do_sample: bool) -> Array:
    """All processors in transformers' order on float32 ``scores[B, V]``."""
    if plan.repetition_penalty:
        scores = apply_repetition_penalty(scores, seen, params.repetition_penalty)
    if plan.min_new_tokens:
        scores = apply_min_new_tokens(scores, num_generated, params.min_new_tokens, plan.eos_token_ids)
    if do_sample:
        if plan.temperature:
            scores = scores / params.temperature
        if plan.top_k:
            scores = apply_top_k(scores, params.top_k, plan.min_tokens_to_keep)
        if plan.top_p:
            scores = apply_top_p(scores, params.top_p, plan.min_tokens_to_keep)
        if plan.min_p:
            scores = apply_min_p(scores, params.min_p, plan.min_tokens_to_keep)
    return scores

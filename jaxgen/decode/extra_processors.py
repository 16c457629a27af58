"""transformers' remaining logits processors and vLLM's presence/frequency penalties, as pure functions of
``scores[B, V]`` with transformers' exact semantics (``generation/logits_process.py``).

:func:`jaxgen.decode.processors.process` calls the hooks below at their places in transformers' order
(``_get_logits_processor``)::

    sequence_bias -> [repetition penalty] -> no_repeat_ngram -> bad_words -> [min_length / min_new_tokens]
    -> forced_bos -> forced_eos -> exponential_decay -> suppress -> begin_suppress -> presence/frequency
    -> (sampling: [temperature, top-k, top-p, min-p] -> typical -> epsilon -> eta) -> renormalize

presence/frequency sit where transformers runs a caller's own ``logits_processor`` list (after its masks, before
the sampling warpers), which is where vLLM applies them too (after its logit bias / bad words / min tokens, before
temperature). Which processors exist is static (:class:`ExtraPlan`); every number, token set and sequence table
is a traced value (:class:`ExtraParams`), so changing them does not recompile. Scalars may also be per-row ``[B]``
and token masks ``[B, V]``.

History: transformers matches n-grams, bad words and biased sequences against ``input_ids``, left padding
included; here only real tokens count (the prompt without its padding, then the generated tokens), so a row's
result does not depend on its batch neighbours. The two agree unless a pad id itself is part of a match.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

from jaxgen.decode import thresholds
from jaxgen.decode.stop_strings import StopTable
from jaxgen.decode.topk import top_k

NEG_INF = -jnp.inf


def _per_row(x: Array) -> Array:
    """A scalar setting as is, a per-row ``[B]`` setting as ``[B, 1]`` (as :func:`processors.per_row`)."""
    return x[:, None] if jnp.ndim(x) == 1 else x


@dataclasses.dataclass(frozen=True)
class ExtraPlan:
    """Static: which of these processors (and the stop-string check) the compiled program contains."""

    sequence_bias: bool = False
    no_repeat_ngram: bool = False
    bad_words: bool = False
    forced_bos: bool = False
    forced_eos: bool = False
    exponential_decay: bool = False
    suppress: bool = False
    begin_suppress: bool = False
    presence_frequency: bool = False
    typical: bool = False
    epsilon: bool = False
    eta: bool = False
    renormalize: bool = False
    stop_window: int = 0  # > 0: stop strings are on; tokens of history their check reads (a bucket)

    @property
    def counts(self) -> bool:
        """Whether the loop keeps per-row counts of generated tokens (``Context.counts``)."""
        return self.presence_frequency


@struct.dataclass
class SequenceTable:
    """Token sequences with a bias each (sequence_bias; bad words with -inf), padded to a static bucket.

    ``tokens`` int32 ``[S, L]``: sequence ``s`` right-aligned (its last token in column ``L - 1``);
    ``lengths`` int32 ``[S]`` (0: an unused row); ``bias`` float32 ``[S]``.
    """

    tokens: Array
    lengths: Array
    bias: Array


@struct.dataclass
class ExtraParams:
    """Traced settings of the processors in :class:`ExtraPlan` (None where the plan has no such processor)."""

    sequence_bias: SequenceTable | None = None
    bad_words: SequenceTable | None = None
    no_repeat_ngram_size: Array | None = None  # i32[]
    forced_bos: Array | None = None  # bool[V]: the forced token
    forced_bos_step: Array | None = None  # i32[]: the generation step it is forced at
    forced_eos: Array | None = None  # bool[V]: the forced tokens (score 0, others -inf)
    forced_eos_step: Array | None = None  # i32[]
    decay: Array | None = None  # f32[N]: factor ** (step - start) - 1 at each step past start, else 0
    suppress: Array | None = None  # bool[V]
    begin_suppress: Array | None = None  # bool[V]
    begin_suppress_step: Array | None = None  # i32[]
    presence_penalty: Array | None = None  # f32[]
    frequency_penalty: Array | None = None  # f32[]
    typical_p: Array | None = None  # f32[] (1.0 = off)
    epsilon_cutoff: Array | None = None  # f32[] (0.0 = off)
    eta_cutoff: Array | None = None  # f32[] (0.0 = off)
    stop: StopTable | None = None  # the stop strings' match table (jaxgen.text.stop_strings builds it)


@struct.dataclass
class Context:
    """What history-dependent processors read: the (bucket-padded, left-padded) prompt and the tokens so far."""

    prompt: Array  # i32[B, T]
    prompt_mask: Array  # [B, T]: > 0 at real prompt tokens
    tokens: Array  # i32[B, N]: generated tokens; the first `step` are real
    step: Array  # i32[]: tokens generated so far
    counts: Array | None = None  # i32[B, V]: occurrences of each token among the generated ones


def history(prompt: Array, prompt_mask: Array, tokens: Array, length: Array, pad: int = 0) -> tuple[Array, Array, Array]:
    """``(ids i32[B, pad + T + N], valid bool[...], end)``: ``pad`` invalid columns, the prompt, the generated
    tokens; valid where a token is real (prompt padding and tokens from ``length`` on are not); ``end`` is the
    index one past the last real token (the same for every row: prompts are left-padded)."""
    b, n = tokens.shape
    ids = jnp.concatenate([jnp.zeros((b, pad), jnp.int32), prompt.astype(jnp.int32), tokens], axis=1)
    valid = jnp.concatenate([jnp.zeros((b, pad), bool), prompt_mask > 0,
                             jnp.broadcast_to(jnp.arange(n) < length, (b, n))], axis=1)
    return ids, valid, pad + prompt.shape[1] + length


def tail(prompt: Array, prompt_mask: Array, tokens: Array, length: Array, width: int) -> tuple[Array, Array]:
    """The last ``width`` tokens of prompt + ``tokens[:, :length]`` (oldest first) and where they are real."""
    ids, valid, end = history(prompt, prompt_mask, tokens, length, pad=width)
    b = ids.shape[0]
    return (jax.lax.dynamic_slice(ids, (0, end - width), (b, width)),
            jax.lax.dynamic_slice(valid, (0, end - width), (b, width)))


# --- the processors ----------------------------------------------------------------------------------------------

def apply_sequence_bias(scores: Array, table: SequenceTable, ctx: Context) -> Array:
    """transformers' ``SequenceBiasLogitsProcessor``: add each sequence's bias to its last token when the tokens
    before it end the history (a one-token sequence always). Biases of sequences sharing a last token add up."""
    s, width = table.tokens.shape
    last_ids, last_valid = tail(ctx.prompt, ctx.prompt_mask, ctx.tokens, ctx.step, width - 1)
    prefix = table.tokens[:, :width - 1]  # [S, L-1], right-aligned
    needed = jnp.arange(width - 1)[None, :] >= (width - table.lengths)[:, None]  # [S, L-1]
    agree = (last_ids[:, None, :] == prefix[None]) & last_valid[:, None, :]  # [B, S, L-1]
    match = jnp.all(agree | ~needed[None], axis=-1) & (table.lengths > 0)[None]  # [B, S]
    bias = jnp.zeros_like(scores).at[:, table.tokens[:, width - 1]].add(jnp.where(match, table.bias[None], 0.0))
    return scores + bias


def apply_no_repeat_ngram(scores: Array, size: Array, ctx: Context) -> Array:
    """transformers' ``NoRepeatNGramLogitsProcessor``: ban every token that would complete an n-gram (``size``
    traced) already in the history. A window starting at ``j`` bans its last token when its first ``n - 1``
    tokens equal the last ``n - 1`` of the history."""
    b, vocab = scores.shape
    ids, valid, end = history(ctx.prompt, ctx.prompt_mask, ctx.tokens, ctx.step)
    h = ids.shape[1]
    # Right-padded copies, so that x[:, j + k] for every window start j is one dynamic slice.
    ids_p = jnp.concatenate([ids, jnp.zeros_like(ids)], axis=1)
    valid_p = jnp.concatenate([valid, jnp.zeros_like(valid)], axis=1)
    shifted = lambda x, k: jax.lax.dynamic_slice(x, (0, k), (b, h))
    n = size
    start = end - (n - 1)  # first token of the current (n-1)-long suffix
    # the suffix is real (its tokens are contiguous: checking the first is enough); n = 1: empty, always true
    suffix_ok = (n == 1) | ((start >= 0) & jnp.take(valid_p, jnp.maximum(start, 0), axis=1))  # [B]

    def agree(i, match):
        want = jnp.take(ids_p, jnp.maximum(start + i, 0), axis=1)  # [B]
        return match & (shifted(ids_p, i) == want[:, None])

    match = valid & shifted(valid_p, n - 1) & suffix_ok[:, None]  # the whole window is real
    match = jax.lax.fori_loop(0, n - 1, agree, match)
    banned = jnp.where(match, shifted(ids_p, n - 1), vocab)  # non-matching windows go to a spare column
    mask = jnp.zeros((b, vocab + 1), bool).at[jnp.arange(b)[:, None], banned].set(True)[:, :vocab]
    return jnp.where(mask, NEG_INF, scores)


def apply_forced(scores: Array, allowed: Array, at_step: Array, step: Array) -> Array:
    """transformers' ``ForcedBOS/EOSTokenLogitsProcessor``: at ``at_step`` every score is -inf but the forced
    tokens' (0)."""
    forced = jnp.where(allowed, 0.0, NEG_INF).astype(scores.dtype)
    return jnp.where(_per_row(step == at_step), jnp.broadcast_to(forced, scores.shape), scores)


def apply_exponential_decay(scores: Array, decay: Array, step: Array, eos_token_ids: tuple[int, ...]) -> Array:
    """transformers' ``ExponentialDecayLengthPenalty``: past ``start``, each EOS score gains
    ``|score| * (factor ** (step - start) - 1)`` (``decay[step]``, computed on the host in float64 as Python's
    ``pow`` is); non-finite EOS scores are left alone."""
    eos = jnp.asarray(eos_token_ids, jnp.int32)
    s = scores[:, eos]
    factor = jax.lax.dynamic_index_in_dim(decay, jnp.minimum(step, decay.shape[0] - 1), keepdims=False)
    penalty = jnp.where(jnp.isfinite(s), jnp.abs(s) * factor, 0.0)
    return scores.at[:, eos].set(s + penalty)


def apply_suppress(scores: Array, mask: Array) -> Array:
    return jnp.where(mask, NEG_INF, scores)


def apply_presence_frequency(scores: Array, counts: Array, presence: Array, frequency: Array) -> Array:
    """vLLM's penalties (OpenAI's definition): ``score -= frequency * count + presence * (count > 0)``, where
    ``count`` is how often the token occurs in the output so far (not the prompt)."""
    scores = scores - _per_row(frequency) * counts.astype(scores.dtype)
    return scores - _per_row(presence) * (counts > 0).astype(scores.dtype)


def apply_typical(scores: Array, mass: Array, min_tokens_to_keep: int = 1) -> Array:
    """transformers' ``TypicalLogitsWarper``: keep the tokens whose surprisal is closest to the entropy, up to
    ``mass`` of probability (ties at the cut survive); ``mass`` 1.0 is off. The cut is found by bisection
    (:func:`thresholds.typical_removed`), not by sorting the vocabulary."""
    normalized = jax.nn.log_softmax(scores, axis=-1)
    p = jnp.exp(normalized)
    ent = -jnp.nansum(normalized * p, axis=-1, keepdims=True)
    shifted = jnp.abs(-normalized - ent)
    mass = jnp.asarray(mass, jnp.float32)
    remove = thresholds.typical_removed(shifted, jax.nn.softmax(scores, axis=-1), mass)
    # min_tokens_to_keep protects the first tokens of the ascending order: lowest shifted, lower id on ties
    # (a stable sort; transformers' torch.sort is unstable, so its choice among such ties is arbitrary).
    if min_tokens_to_keep > 1:
        _, first = top_k(-shifted, min_tokens_to_keep)
        remove = remove.at[jnp.arange(scores.shape[0])[:, None], first].set(False)
    return jnp.where(remove & (_per_row(mass) < 1.0), NEG_INF, scores)


def _keep_top(scores: Array, remove: Array, min_tokens_to_keep: int) -> Array:
    """Never remove the ``min_tokens_to_keep`` highest scores (ties with the last of them survive)."""
    kth = jnp.max(scores, axis=-1, keepdims=True) if min_tokens_to_keep == 1 else \
        top_k(scores, min_tokens_to_keep)[0][:, -1:]
    return jnp.where(remove & (scores < kth), NEG_INF, scores)


def apply_epsilon(scores: Array, epsilon: Array, min_tokens_to_keep: int = 1) -> Array:
    """transformers' ``EpsilonLogitsWarper``: drop tokens of probability below ``epsilon`` (0.0 is off)."""
    return _keep_top(scores, jax.nn.softmax(scores, axis=-1) < _per_row(epsilon), min_tokens_to_keep)


def apply_eta(scores: Array, epsilon: Array, min_tokens_to_keep: int = 1) -> Array:
    """transformers' ``EtaLogitsWarper``: drop tokens of probability below ``min(eps, sqrt(eps) * exp(-H))``
    (``H``: the entropy, as ``torch.distributions.Categorical`` computes it); 0.0 is off."""
    log_p = jax.nn.log_softmax(scores, axis=-1)
    probs = jnp.exp(log_p)
    entropy = -jnp.sum(jnp.maximum(log_p, jnp.finfo(log_p.dtype).min) * probs, axis=-1, keepdims=True)
    eps = _per_row(epsilon)
    eta = jnp.minimum(eps, jnp.sqrt(eps) * jnp.exp(-entropy))
    return _keep_top(scores, jax.nn.softmax(scores, axis=-1) < eta, min_tokens_to_keep)


# --- hooks, called by processors.process at their places in transformers' order -----------------------------------

def before_repetition_penalty(scores: Array, plan: ExtraPlan, params: ExtraParams, ctx: Context | None) -> Array:
    if plan.sequence_bias:
        scores = apply_sequence_bias(scores, params.sequence_bias, ctx)
    return scores


def after_repetition_penalty(scores: Array, plan: ExtraPlan, params: ExtraParams, ctx: Context | None) -> Array:
    if plan.no_repeat_ngram:
        scores = apply_no_repeat_ngram(scores, params.no_repeat_ngram_size, ctx)
    if plan.bad_words:
        scores = apply_sequence_bias(scores, params.bad_words, ctx)
    return scores


def after_min_length(scores: Array, plan: ExtraPlan, params: ExtraParams, ctx: Context | None, step: Array,
                     eos_token_ids: tuple[int, ...]) -> Array:
    if plan.forced_bos:
        scores = apply_forced(scores, params.forced_bos, params.forced_bos_step, step)
    if plan.forced_eos:
        scores = apply_forced(scores, params.forced_eos, params.forced_eos_step, step)
    if plan.exponential_decay and eos_token_ids:
        scores = apply_exponential_decay(scores, params.decay, step, eos_token_ids)
    if plan.suppress:
        scores = apply_suppress(scores, params.suppress)
    if plan.begin_suppress:
        scores = jnp.where(_per_row(step == params.begin_suppress_step), apply_suppress(scores, params.begin_suppress),
                           scores)
    if plan.presence_frequency:
        scores = apply_presence_frequency(scores, ctx.counts, params.presence_penalty, params.frequency_penalty)
    return scores


def after_sampling_filters(scores: Array, plan: ExtraPlan, params: ExtraParams, min_tokens_to_keep: int) -> Array:
    if plan.typical:
        # typical_p = 1.0 is off: skip the whole-vocabulary sort at run time.
        scores = jax.lax.cond(jnp.any(params.typical_p < 1.0),
                              lambda s: apply_typical(s, params.typical_p, min_tokens_to_keep), lambda s: s, scores)
    if plan.epsilon:
        scores = apply_epsilon(scores, params.epsilon_cutoff, min_tokens_to_keep)
    if plan.eta:
        scores = apply_eta(scores, params.eta_cutoff, min_tokens_to_keep)
    return scores


def last(scores: Array, plan: ExtraPlan) -> Array:
    """``renormalize_logits``: transformers' ``LogitNormalization`` (log-softmax), always the last processor."""
    return jax.nn.log_softmax(scores, axis=-1) if plan.renormalize else scores


def needs_context(plan: ExtraPlan) -> bool:
    return plan.sequence_bias or plan.no_repeat_ngram or plan.bad_words or plan.presence_frequency


def count_tokens(counts: Array, tokens: Array, live: Array) -> Array:
    """``counts[B, V]`` plus one at each live row's new token."""
    return counts.at[jnp.arange(tokens.shape[0]), tokens].add(live.astype(counts.dtype))

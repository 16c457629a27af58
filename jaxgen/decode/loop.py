"""Greedy and sampling decoding: prefill plus the whole token loop in one ``lax.while_loop``.

The loop knows nothing about the model: it calls ``step(params, tokens, positions, cache, mask,
logits_positions)``. Its state is one pytree; outputs go into preallocated buffers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.experimental
import jax.numpy as jnp
from flax import struct
from jax import Array

from jaxgen.cache import KVCache
from jaxgen.decode import extra_processors as X
from jaxgen.decode import processors as P
from jaxgen.decode.logprobs import token_and_top_logprobs
from jaxgen.decode.sampling import greedy, sample_from_uniform, step_uniforms
from jaxgen.decode.stop_strings import stop_hit


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static settings of one compiled decoding program."""

    max_new_tokens: int  # buffer length (a bucket); the traced limit may stop earlier
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    top_logprobs: int = 0
    logprobs_mode: str = "raw"  # "raw" | "processed"
    early_stopping: bool | str = False
    plan: P.ProcessorPlan = P.ProcessorPlan()
    stream_every: int = 0  # > 0: hand tokens to the host every this many steps (greedy/sampling only)


@struct.dataclass
class DecodeParams:
    """Traced settings of one call."""

    processors: P.ProcessorParams
    max_new_tokens: Array  # i32[]: the requested number (<= spec.max_new_tokens)
    pad_token_id: Array  # i32[]
    length_penalty: Array  # f32[]
    stream_id: Array  # i32[]: which host callback receives streamed tokens (see jaxgen.decode.streaming)


@struct.dataclass
class LoopState:
    step: Array  # i32[]: tokens generated so far (same for all rows)
    tokens: Array  # i32[B, N]
    token_logprobs: Array  # f32[B, N]
    top_ids: Array  # i32[B, N, k]
    top_logprobs: Array  # f32[B, N, k]
    done: Array  # bool[B]
    num_generated: Array  # i32[B]
    positions: Array  # i32[B]: position id of the next token
    seen: Array  # bool[B, V] (or [B, 0] without repetition penalty): tokens of prompt + output
    nonfinite_step: Array  # i32[B]: first step whose logits held NaN or +inf (-1: none)
    cache: KVCache
    counts: Array | None = None  # i32[B, V] with presence/frequency penalties: occurrences in the output so far


def nonfinite_rows(logits: Array) -> Array:
    """``bool[B]``: rows of ``logits[B, V]`` holding NaN or +inf (-inf is a legitimate masked score)."""
    return jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=-1)


def first_nonfinite(seen: Array, logits: Array, step: Array, live: Array) -> Array:
    """Update ``seen[B]`` (first bad step per row, -1 none) with this step's ``logits[B, V]`` for ``live`` rows."""
    return jnp.where((seen < 0) & live & nonfinite_rows(logits), step, seen)


def prompt_positions(mask: Array) -> Array:
    """Position ids of a left-padded prompt, as transformers' generate: ``cumsum(mask) - 1``, padding at 1."""
    return jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 1).astype(jnp.int32)


def seen_tokens(input_ids: Array, mask: Array, vocab: int) -> Array:
    """``bool[B, V]``: which tokens occur in the prompt, ignoring left padding (transformers 5.x semantics)."""
    rows = jnp.arange(input_ids.shape[0])[:, None]
    return jnp.zeros((input_ids.shape[0], vocab), bool).at[rows, input_ids].max(mask > 0)


def prefill(step, params, input_ids: Array, mask: Array, cache: KVCache,
            images=None) -> tuple[Array, KVCache, Array]:
    """Run the prompt; return last-position logits ``f32[B, V]``, the cache, and next positions ``[B]``.
    ``images``: what the prompt's images add (passed to the step as is; only the prefill reads them)."""
    positions = prompt_positions(mask)
    last = jnp.full((input_ids.shape[0],), input_ids.shape[1] - 1, jnp.int32)
    extra = () if images is None else (images,)
    logits, cache = step(params, input_ids, positions, cache, mask, last, *extra)
    return logits, cache, positions[:, -1] + 1


def model_if(go: Array, step, params, last: Array, positions: Array, cache: KVCache,
             logits: Array) -> tuple[Array, Array, KVCache]:
    """When ``go``: feed ``last[B, 1]`` at ``positions[B]`` and return ``(positions + 1, new logits[B, V], cache)``;
    otherwise the inputs unchanged. Only what the model reads and writes goes through the ``lax.cond``, so the
    loops' output buffers are never copied by it."""

    def run(last, positions, cache, logits):
        new, cache = step(params, last, positions[:, None], cache, jnp.ones(last.shape, jnp.int32))
        return positions + 1, new[:, 0], cache

    def keep(last, positions, cache, logits):
        return positions, logits, cache

    return jax.lax.cond(go, run, keep, last, positions, cache, logits)


def _is_eos(tokens: Array, eos_ids: tuple[int, ...]) -> Array:
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[:, None] == jnp.asarray(eos_ids, jnp.int32)[None, :], axis=-1)


def stop_string_hit(plan: P.ProcessorPlan, params: P.ProcessorParams, prompt: Array, prompt_mask: Array,
                    tokens: Array, length: Array) -> Array:
    """``bool[B]``: rows whose newest token (``tokens[:, length - 1]``) completes a stop string (transformers'
    ``StopStringCriteria`` over the prompt's real tokens and the generated ones)."""
    if not plan.extra.stop_window:
        return jnp.zeros(tokens.shape[:1], bool)
    ids, valid = X.tail(prompt, prompt_mask, tokens, length, plan.extra.stop_window)
    return stop_hit(params.extra.stop, ids, valid)


def decode(step, params, input_ids: Array, mask: Array, row_keys: Array | None, cache: KVCache,
           spec: DecodeSpec, dp: DecodeParams, emit=None, images=None) -> LoopState:
    """Greedy or sampled decoding of ``input_ids[B, T]`` (left-padded, ``mask[B, T]``) up to ``dp.max_new_tokens``.

    ``row_keys``: typed keys ``[B]`` when sampling. ``emit(stream_id, tokens, step, done)``: the host function
    that receives tokens every ``spec.stream_every`` steps (required when streaming). Returns the final loop
    state (buffers of length ``spec.max_new_tokens``).
    """
    b = input_ids.shape[0]
    n, k = spec.max_new_tokens, spec.top_logprobs
    logits, cache, positions = prefill(step, params, input_ids, mask, cache, images)
    vocab = logits.shape[-1]
    plan = spec.plan
    seen = seen_tokens(input_ids, mask, vocab) if plan.repetition_penalty else jnp.zeros((b, 0), bool)
    counts = jnp.zeros((b, vocab), jnp.int32) if plan.extra.counts else None
    state = LoopState(
        step=jnp.zeros((), jnp.int32), tokens=jnp.full((b, n), dp.pad_token_id, jnp.int32),
        token_logprobs=jnp.zeros((b, n), jnp.float32), top_ids=jnp.full((b, n, k), -1, jnp.int32),
        top_logprobs=jnp.zeros((b, n, k), jnp.float32), done=jnp.zeros((b,), bool),
        num_generated=jnp.zeros((b,), jnp.int32), positions=positions, seen=seen,
        nonfinite_step=jnp.full((b,), -1, jnp.int32), cache=cache, counts=counts)

    def choose(state: LoopState, logits: Array) -> LoopState:
        context = X.Context(prompt=input_ids, prompt_mask=mask, tokens=state.tokens, step=state.step,
                            counts=state.counts) if X.needs_context(plan.extra) else None
        scores = P.process(logits, plan, dp.processors, seen=state.seen, num_generated=state.step,
                           do_sample=spec.do_sample, context=context)
        if spec.do_sample:
            token = sample_from_uniform(scores, step_uniforms(row_keys, state.step))
        else:
            token = greedy(scores)
        token = jnp.where(state.done, dp.pad_token_id, token)
        source = scores if spec.logprobs_mode == "processed" else logits
        lp, top_ids, top_lp = token_and_top_logprobs(jax.nn.log_softmax(source, axis=-1), token, k)
        live = ~state.done
        lp = jnp.where(live, lp, 0.0)
        top_ids = jnp.where(live[:, None], top_ids, -1)
        top_lp = jnp.where(live[:, None], top_lp, 0.0)
        i = state.step
        bad = first_nonfinite(state.nonfinite_step, logits, i, live)
        seen = state.seen
        if plan.repetition_penalty:
            seen = seen.at[jnp.arange(b), token].set(True)
        counts = state.counts
        if plan.extra.counts:
            counts = X.count_tokens(counts, token, live)
        tokens = state.tokens.at[:, i].set(token)
        return state.replace(
            tokens=tokens, token_logprobs=state.token_logprobs.at[:, i].set(lp),
            top_ids=state.top_ids.at[:, i].set(top_ids), top_logprobs=state.top_logprobs.at[:, i].set(top_lp),
            done=state.done | _is_eos(token, plan.eos_token_ids)
            | stop_string_hit(plan, dp.processors, input_ids, mask, tokens, i + 1),
            num_generated=state.num_generated + live, seen=seen, counts=counts, nonfinite_step=bad, step=i + 1)

    def cond(state: LoopState) -> Array:
        return (state.step < dp.max_new_tokens) & ~jnp.all(state.done)

    def body(state: LoopState) -> LoopState:
        # The model runs first, on the token chosen last: the loop needs no `lax.cond` around the model (which
        # copied the whole cache every step on XLA:CPU and costs a host round trip per step on GPU).
        last = jax.lax.dynamic_index_in_dim(state.tokens, state.step - 1, axis=1, keepdims=True)
        logits, cache = step(params, last, state.positions[:, None], state.cache, jnp.ones(last.shape, jnp.int32))
        return choose(state.replace(positions=state.positions + 1, cache=cache), logits[:, 0])

    if spec.stream_every:
        if emit is None:
            raise ValueError("streaming (spec.stream_every > 0) needs the host function `emit`.")
        choose = _streaming(choose, spec.stream_every, dp, emit)
    # The first token comes from the prefill's logits, outside the loop (so `choose` is traced twice).
    return jax.lax.while_loop(cond, body, choose(state, logits))


def _streaming(choose, every: int, dp: DecodeParams, host_fn):
    """Wrap ``choose`` so that every ``every`` steps (and at the end) the tokens so far go to ``host_fn``.

    One ordered ``io_callback`` per chunk, not per token; the host side decides what to do with them.
    """
    limit = dp.max_new_tokens

    def emit(state: LoopState) -> None:
        jax.experimental.io_callback(host_fn, None, dp.stream_id, state.tokens, state.step, state.done,
                                     ordered=True)

    def wrapped(state: LoopState, logits: Array) -> LoopState:
        state = choose(state, logits)
        flush = (state.step % every == 0) | jnp.all(state.done) | (state.step >= limit)
        jax.lax.cond(flush, emit, lambda s: None, state)
        return state

    return wrapped

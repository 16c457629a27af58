"""The engine's compiled programs over a persistent, donated slot state.

``S`` slots (rows) share one KV cache of capacity ``C = P + 2M`` (``P`` prompt bucket cap, ``M`` new-token cap)
and its one write index, which stays in ``[P, C)``:

- :func:`admit` prefills ``k`` new prompts (left-padded to a bucket ``L``) on a small cache, then writes them at
  slots ``[index - L, index)`` of their rows (every other slot of those rows invalid);
- :func:`copy` copies prefilled rows into more slots (``num_return_sequences`` samples share one prefill);
- :func:`decode_chunk` decodes every slot one token per step at the shared index, up to a traced number of steps,
  leaving early once enough rows finished for the host to admit the next request;
- :func:`shift` moves every row's slots left when the index reaches ``C``: by the oldest live row's first slot
  (at least ``M``, since a row spans at most ``P + M`` slots), so it happens at most once per ``M`` steps.

Each slot's settings are traced ``[S]`` arrays (:class:`SlotSettings`), so any mix of settings shares a program.
Only ``step(params, tokens, positions, cache, mask, logits_positions)`` and the cache pytree are used, so every
model family works; RoPE takes each row's own positions, and slots stay contiguous per row (sliding windows
compare slot distances).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

from jaxgen import cache as kv
from jaxgen.cache import KVCache
from jaxgen.decode import extra_processors as X
from jaxgen.decode import processors as P
from jaxgen.decode.logprobs import token_and_top_logprobs
from jaxgen.decode.loop import nonfinite_rows, prefill, seen_tokens
from jaxgen.decode.sampling import greedy, sample_from_uniform
from jaxgen.model import make_step


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Static shape of an engine's state (one compiled set of programs per spec)."""

    slots: int  # S
    prompt_cap: int  # P: largest prompt bucket
    new_cap: int  # M: largest max_new_tokens (output buffer length)
    top_logprobs: int  # K: largest top_logprobs
    num_eos: int  # E: most EOS ids per request
    candidates: int  # top-k candidate count of the sampling filters (0: whole vocabulary)

    @property
    def capacity(self) -> int:
        return self.prompt_cap + 2 * self.new_cap


@struct.dataclass
class SlotState:
    """Device state of every slot (donated to each program)."""

    cache: KVCache  # S rows, capacity C, shared index in [P, C)
    logits: Array  # f32[S, V]: each live row's logits for its next token
    seen: Array  # bool[S, V]: tokens of prompt + output (repetition penalty)
    counts: Array  # i32[S, V]: occurrences of each token in the output (presence / frequency penalties)
    positions: Array  # i32[S]: position id of each row's next token
    steps: Array  # i32[S]: tokens generated so far
    live: Array  # bool[S]: admitted and not finished
    start: Array  # i32[S]: first slot of each row's region (its padded prompt)
    nonfinite: Array  # i32[S]: first step whose logits held NaN or +inf (-1: none)
    tokens: Array  # i32[S, M]
    token_logprobs: Array  # f32[S, M]
    top_ids: Array  # i32[S, M, K]
    top_logprobs: Array  # f32[S, M, K]


@struct.dataclass
class SlotSettings:
    """Traced per-slot settings (host-made, changing them never recompiles)."""

    processors: P.ProcessorParams  # every field [S]
    do_sample: Array  # bool[S]
    processed: Array  # bool[S]: logprobs_mode == "processed"
    max_new: Array  # i32[S]
    presence: Array  # f32[S]: vLLM's presence_penalty (0: off)
    frequency: Array  # f32[S]: vLLM's frequency_penalty (0: off)
    eos: Array  # i32[S, E]: EOS ids, padded with V (no token)
    keys: Array  # u32[S, 2]: row key data (already derived, see derive_keys)


def _constrain(state: SlotState, shardings) -> SlotState:
    return state if shardings is None else jax.lax.with_sharding_constraint(state, shardings)


_STATIC = ("graphdef", "config", "dtype", "spec", "shardings")


@functools.partial(jax.jit, static_argnames=("config", "dtype", "spec", "shardings"))
def init_state(config, dtype: str, spec: EngineSpec, shardings) -> SlotState:
    s, m, k, v = spec.slots, spec.new_cap, spec.top_logprobs, config.vocab_size
    cache = kv.init_cache(config, s, spec.capacity, jnp.dtype(dtype)).replace(
        index=jnp.asarray(spec.prompt_cap, jnp.int32))
    i32 = lambda fill, *shape: jnp.full(shape, fill, jnp.int32)
    state = SlotState(cache=cache, logits=jnp.zeros((s, v), jnp.float32), seen=jnp.zeros((s, v), bool),
                      counts=jnp.zeros((s, v), jnp.int32),
                      positions=i32(0, s), steps=i32(0, s), live=jnp.zeros((s,), bool), start=i32(0, s),
                      nonfinite=i32(-1, s), tokens=i32(0, s, m), token_logprobs=jnp.zeros((s, m), jnp.float32),
                      top_ids=i32(-1, s, m, k), top_logprobs=jnp.zeros((s, m, k), jnp.float32))
    return _constrain(state, shardings)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def admit(graphdef, config, dtype: str, spec: EngineSpec, shardings, params, state: SlotState, ids: Array,
          mask: Array, slots: Array) -> SlotState:
    """Prefill ``ids[k, L]`` (left-padded, ``mask``) into slots ``slots[k]`` (``S``: filler, dropped)."""
    step = make_step(graphdef)
    k, length = ids.shape
    part = kv.init_cache(config, k, length, jnp.dtype(dtype))
    logits, part, positions = prefill(step, params, ids, mask, part)
    start = state.cache.index - length
    put = lambda x, v: x.at[slots].set(v, mode="drop")
    state = state.replace(
        cache=kv.write_rows(state.cache, slots, part, start), logits=put(state.logits, logits),
        seen=put(state.seen, seen_tokens(ids, mask, logits.shape[-1])), counts=put(state.counts, 0),
        positions=put(state.positions, positions),
        steps=put(state.steps, 0), live=put(state.live, True), start=put(state.start, start),
        nonfinite=put(state.nonfinite, -1))
    return _constrain(state, shardings)


@functools.partial(jax.jit, static_argnames=("spec", "shardings"), donate_argnames=("state",))
def copy(spec: EngineSpec, shardings, state: SlotState, src: Array, dst: Array) -> SlotState:
    """Slot ``dst[i]`` becomes a copy of the freshly admitted slot ``src[i]`` (``dst[i] = S``: dropped)."""
    put = lambda x: x.at[dst].set(jnp.take(x, src, axis=0, mode="clip"), mode="drop")
    state = state.replace(cache=kv.copy_rows(state.cache, src, dst), logits=put(state.logits), seen=put(state.seen),
                          counts=put(state.counts),
                          positions=put(state.positions), steps=put(state.steps), live=put(state.live),
                          start=put(state.start), nonfinite=put(state.nonfinite))
    return _constrain(state, shardings)


@functools.partial(jax.jit, static_argnames=("spec", "shardings"), donate_argnames=("state",))
def shift(spec: EngineSpec, shardings, state: SlotState) -> SlotState:
    """Make room at the end of the cache: move every row left by the oldest live row's start (at most ``C - P``,
    so the index stays >= P and any prompt bucket can still be admitted)."""
    c = spec.capacity
    d = jnp.minimum(jnp.min(jnp.where(state.live, state.start, c)), c - spec.prompt_cap)
    state = state.replace(cache=kv.shift_slots(state.cache, d), start=state.start - d)
    return _constrain(state, shardings)


@functools.partial(jax.jit, static_argnames=("spec", "shardings"), donate_argnames=("state",))
def restart(spec: EngineSpec, shardings, state: SlotState) -> SlotState:
    """Between calls: no row live (a call left early leaves rows behind), the shared index back to ``P``. (A
    jitted step, not a host-made scalar: a ``device_put`` array is committed where jit outputs are not, and jit
    would compile again for it.)"""
    state = state.replace(cache=state.cache.replace(index=jnp.full((), spec.prompt_cap, jnp.int32)),
                          live=jnp.zeros_like(state.live))
    return _constrain(state, shardings)


@jax.jit
def derive_keys(data: Array, ret: Array, fold: Array) -> Array:
    """Row key data ``u32[R, 2]``: ``fold_in(key, ret)`` where ``fold`` (sample ``ret`` of a prompt returning
    several), the key itself otherwise — as ``jaxgen.generate`` derives them."""
    folded = jax.random.key_data(jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(data), ret))
    return jnp.where(fold[:, None], folded, data)


@functools.partial(jax.jit, static_argnames=_STATIC + ("with_top",), donate_argnames=("state",))
def decode_chunk(graphdef, config, dtype: str, spec: EngineSpec, shardings, with_top: bool, params,
                 state: SlotState, settings: SlotSettings, num_steps: Array,
                 need: Array) -> tuple[SlotState, Array]:
    """Up to ``num_steps`` decoding steps of every live slot; stops early once ``need`` rows finished in this
    chunk, or when the cache index reaches the capacity (the host then calls :func:`shift`). Returns the state
    and the number of steps run."""
    step = make_step(graphdef)
    s, vocab = state.logits.shape
    rows = jnp.arange(s)
    k = spec.top_logprobs if with_top else 0
    pp = settings.processors
    # Rows choose in jaxgen.generate's order: repetition penalty -> min-new-tokens (per-row EOS ids; min_length
    # folded in on the host) -> presence / frequency penalties -> the sampling filters (temperature, top-k, top-p,
    # min-p) with per-row values.
    plan = P.ProcessorPlan(temperature=True, top_k=True, top_p=True, min_p=True, top_k_candidates=spec.candidates)
    eos_mask = jnp.zeros((s, vocab), bool).at[rows[:, None], settings.eos].set(True, mode="drop")
    keys = jax.random.wrap_key_data(settings.keys)
    # Idle slots choose from distinct scores, so their (discarded) filter work never sends the live rows down
    # the whole-vocabulary path.
    idle_scores = jnp.broadcast_to(jnp.arange(vocab, dtype=jnp.float32), (s, vocab))

    def choose(st: SlotState) -> tuple[SlotState, Array, Array]:
        live, logits = st.live, st.logits
        scores = jnp.where(live[:, None], logits, idle_scores)
        scores = P.apply_repetition_penalty(scores, st.seen, pp.repetition_penalty)
        scores = jnp.where(eos_mask & (st.steps < pp.min_new_tokens)[:, None], P.NEG_INF, scores)
        # A zero penalty subtracts exact zeros, so rows without one keep their scores bit for bit.
        penalized = live & ((settings.presence != 0) | (settings.frequency != 0))
        scores = jax.lax.cond(jnp.any(penalized), lambda x: X.apply_presence_frequency(
            x, st.counts, settings.presence, settings.frequency), lambda x: x, scores)
        sampled = jax.lax.cond(
            jnp.any(live & settings.do_sample),
            lambda x: P.process(x, plan, pp, seen=None, num_generated=st.steps, do_sample=True), lambda x: x, scores)
        u = jax.vmap(lambda key, t: jax.random.uniform(jax.random.fold_in(key, t), (), jnp.float32))(keys, st.steps)
        token = jnp.where(settings.do_sample, sample_from_uniform(sampled, u), greedy(scores))
        processed = jnp.where(settings.do_sample[:, None], sampled, scores)
        source = jnp.where(settings.processed[:, None], processed, logits)
        lp, top_ids, top_lp = token_and_top_logprobs(jax.nn.log_softmax(source, axis=-1), token, k)
        col = jnp.where(live, st.steps, spec.new_cap)  # out of range for idle rows: their writes are dropped
        steps = st.steps + live
        finished = live & (jnp.any(token[:, None] == settings.eos, axis=-1) | (steps >= settings.max_new))
        st = st.replace(
            tokens=st.tokens.at[rows, col].set(token, mode="drop"),
            token_logprobs=st.token_logprobs.at[rows, col].set(lp, mode="drop"),
            top_ids=st.top_ids.at[rows, col, :k].set(top_ids, mode="drop") if k else st.top_ids,
            top_logprobs=st.top_logprobs.at[rows, col, :k].set(top_lp, mode="drop") if k else st.top_logprobs,
            nonfinite=jnp.where((st.nonfinite < 0) & live & nonfinite_rows(logits), st.steps, st.nonfinite),
            seen=st.seen.at[rows, token].max(live), counts=X.count_tokens(st.counts, token, live), steps=steps,
            live=live & ~finished)
        return st, token, jnp.sum(finished)

    def cond(carry) -> Array:
        st, i, done = carry
        return (i < num_steps) & jnp.any(st.live) & (st.cache.index < spec.capacity) & (done < need)

    def body(carry):
        st, i, done = carry
        st, token, finished = choose(st)
        # No `lax.cond` around the model (it would copy the whole cache every step): when no row is live any
        # more the step is wasted, once, and its rows are rewritten at their next admission.
        logits, cache = step(params, token[:, None], st.positions[:, None], st.cache, jnp.ones((s, 1), jnp.int32))
        return st.replace(positions=st.positions + 1, logits=logits[:, 0], cache=cache), i + 1, done + finished

    state, i, _ = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)))
    return _constrain(state, shardings), i

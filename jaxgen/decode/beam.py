"""Beam search in one ``lax.while_loop``, following transformers >= 4.36 (the vectorised ``_beam_search``).

Per step and batch item: processors run on log-softmax scores; the ``K = max(2, 1 + n_eos) * num_beams`` best
continuations over all beams are taken; the best ``num_beams`` of them that did not stop keep running; those
among the top ``num_beams`` that stopped (EOS, or the length limit) compete with earlier finished hypotheses under
``score / generated_length ** length_penalty``. ``early_stopping`` True / False (heuristic) / "never".
Logprob records (chosen token and top-k alternatives) travel with each hypothesis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

from jaxgen.cache import KVCache, reorder_rows
from jaxgen.decode import extra_processors as X
from jaxgen.decode import processors as P
from jaxgen.decode.logprobs import token_and_top_logprobs
from jaxgen.decode.loop import (DecodeParams, DecodeSpec, model_if, nonfinite_rows, prefill, seen_tokens,
                                stop_string_hit)
from jaxgen.decode.topk import top_k

BIG = 1.0e9  # transformers' "very large" score offset, kept identical so float rounding matches too


@struct.dataclass
class Hypotheses:
    """Per batch item and hypothesis ``[b, n, ...]``: generated tokens and their logprob records."""

    tokens: Array  # i32[b, n, N]
    token_logprobs: Array  # f32[b, n, N]
    top_ids: Array  # i32[b, n, N, k]
    top_logprobs: Array  # f32[b, n, N, k]

    def take(self, idx: Array) -> "Hypotheses":
        """Gather hypotheses ``idx[b, m]`` along axis 1."""
        return jax.tree_util.tree_map(lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)),
                                                                    axis=1), self)

    def concat(self, other: "Hypotheses") -> "Hypotheses":
        return jax.tree_util.tree_map(lambda a, c: jnp.concatenate([a, c], axis=1), self, other)


@struct.dataclass
class BeamState:
    step: Array  # i32[]: generated tokens so far
    running: Hypotheses  # [b, nb, ...]
    running_scores: Array  # f32[b, nb]: summed processed logprobs
    finished: Hypotheses  # [b, nb, ...]
    finished_scores: Array  # f32[b, nb]: length-normalised
    finished_lengths: Array  # i32[b, nb]
    is_finished: Array  # bool[b, nb]
    improvable: Array  # bool[b, 1]: the early-stopping heuristic is not yet satisfied
    all_candidates_stopped: Array  # bool[]
    seen: Array  # bool[b*nb, V] or [b*nb, 0]
    positions: Array  # i32[b*nb]
    logits: Array  # f32[b*nb, V]: the model's logits for each beam's next token
    nonfinite_step: Array  # i32[b]: first step whose logits held NaN or +inf, over the item's beams (-1: none)
    cache: KVCache
    counts: Array | None = None  # i32[b*nb, V] with presence/frequency penalties: each beam's output token counts


def beam_search(step, params, input_ids: Array, mask: Array, cache: KVCache, spec: DecodeSpec,
                dp: DecodeParams, images=None) -> BeamState:
    """Beam search over ``input_ids[b, T]``; ``cache`` has ``b`` rows (copied to the beams after prefill)."""
    b = input_ids.shape[0]
    nb, n, k = spec.num_beams, spec.max_new_tokens, spec.top_logprobs
    plan = spec.plan
    n_eos = len(plan.eos_token_ids)
    kk = max(2, 1 + n_eos) * nb
    rows = b * nb

    # Prefill each prompt once, then copy its cache to the beams (identical rows, identical numbers).
    logits, cache, positions = prefill(step, params, input_ids, mask, cache, images)
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, nb, axis=0) if x.ndim else x, cache)
    logits, positions = jnp.repeat(logits, nb, axis=0), jnp.repeat(positions, nb, axis=0)
    vocab = logits.shape[-1]
    seen = (seen_tokens(jnp.repeat(input_ids, nb, 0), jnp.repeat(mask, nb, 0), vocab) if plan.repetition_penalty
            else jnp.zeros((rows, 0), bool))
    beam_prompt, beam_mask = jnp.repeat(input_ids, nb, axis=0), jnp.repeat(mask, nb, axis=0)

    def empty(count: int) -> Hypotheses:
        return Hypotheses(tokens=jnp.full((b, count, n), dp.pad_token_id, jnp.int32),
                          token_logprobs=jnp.zeros((b, count, n), jnp.float32),
                          top_ids=jnp.full((b, count, n, k), -1, jnp.int32),
                          top_logprobs=jnp.zeros((b, count, n, k), jnp.float32))

    state = BeamState(
        step=jnp.zeros((), jnp.int32), running=empty(nb),
        running_scores=jnp.tile(jnp.asarray([0.0] + [-BIG] * (nb - 1), jnp.float32), (b, 1)),
        finished=empty(nb), finished_scores=jnp.full((b, nb), -BIG, jnp.float32),
        finished_lengths=jnp.zeros((b, nb), jnp.int32), is_finished=jnp.zeros((b, nb), bool),
        improvable=jnp.ones((b, 1), bool), all_candidates_stopped=jnp.zeros((), bool), seen=seen,
        positions=positions, logits=logits, nonfinite_step=jnp.full((b,), -1, jnp.int32), cache=cache,
        counts=jnp.zeros((rows, vocab), jnp.int32) if plan.extra.counts else None)
    top_nb_mask = jnp.arange(kk) < nb
    length_penalty = dp.length_penalty

    def advance(state: BeamState, logits: Array) -> BeamState:
        i = state.step
        bad_item = jnp.any(nonfinite_rows(logits).reshape(b, nb), axis=1)
        nonfinite_step = jnp.where((state.nonfinite_step < 0) & bad_item, i, state.nonfinite_step)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        context = X.Context(prompt=beam_prompt, prompt_mask=beam_mask, tokens=state.running.tokens.reshape(rows, n),
                            step=i, counts=state.counts) if X.needs_context(plan.extra) else None
        scores = P.process(log_probs, plan, dp.processors, seen=state.seen, num_generated=i, do_sample=False,
                           context=context)
        record = scores if spec.logprobs_mode == "processed" else log_probs
        if spec.logprobs_mode == "processed":
            record = jax.nn.log_softmax(record, axis=-1)
        acc = (scores.reshape(b, nb, vocab) + state.running_scores[:, :, None]).reshape(b, nb * vocab)
        cand_scores, flat_idx = top_k(acc, kk)
        parent, token = flat_idx // vocab, (flat_idx % vocab).astype(jnp.int32)

        # Logprob records of each candidate's new token, from its parent beam's row: the top-k alternatives are
        # taken once per beam row ([b*nb, V]) and then gathered, not recomputed for each of the kk candidates.
        parent_rows = (jnp.arange(b)[:, None] * nb + parent).reshape(-1)
        lp = record[parent_rows, token.reshape(-1)]
        _, beam_top_ids, beam_top_lp = token_and_top_logprobs(record, jnp.zeros((rows,), jnp.int32), k)
        top_ids, top_lp = beam_top_ids[parent_rows], beam_top_lp[parent_rows]
        cand = state.running.take(parent)
        cand = cand.replace(
            tokens=cand.tokens.at[:, :, i].set(token),
            token_logprobs=cand.token_logprobs.at[:, :, i].set(lp.reshape(b, kk)),
            top_ids=cand.top_ids.at[:, :, i].set(top_ids.reshape(b, kk, k)),
            top_logprobs=cand.top_logprobs.at[:, :, i].set(top_lp.reshape(b, kk, k)))

        stopped = (i + 1 >= dp.max_new_tokens) | jnp.zeros((b, kk), bool)
        if n_eos:
            stopped |= jnp.any(token[..., None] == jnp.asarray(plan.eos_token_ids, jnp.int32), axis=-1)
        if plan.extra.stop_window:  # transformers checks its stopping criteria on every candidate
            stopped |= stop_string_hit(plan, dp.processors, jnp.repeat(input_ids, kk, axis=0),
                                       jnp.repeat(mask, kk, axis=0), cand.tokens.reshape(b * kk, n),
                                       i + 1).reshape(b, kk)

        # Continue with the best num_beams candidates that did not stop.
        live_scores = cand_scores + stopped.astype(jnp.float32) * -BIG
        _, next_idx = top_k(live_scores, nb)
        running = cand.take(next_idx)
        running_scores = jnp.take_along_axis(live_scores, next_idx, axis=1)
        origin = jnp.take_along_axis(parent, next_idx, axis=1)

        # Stopped candidates among the top num_beams compete with the finished hypotheses.
        just_finished = stopped & top_nb_mask[None, :]
        fin_scores = cand_scores / ((i + 1).astype(jnp.float32) ** length_penalty)
        full = jnp.all(state.is_finished, axis=-1, keepdims=True) & (spec.early_stopping is True)
        fin_scores += full.astype(jnp.float32) * -BIG
        fin_scores += (~state.improvable).astype(jnp.float32) * -BIG
        fin_scores += (~just_finished).astype(jnp.float32) * -BIG
        merged_scores = jnp.concatenate([state.finished_scores, fin_scores], axis=1)
        _, keep = top_k(merged_scores, nb)
        take = lambda x: jnp.take_along_axis(x, keep, axis=1)
        finished = state.finished.concat(cand).take(keep)
        finished_scores = take(merged_scores)
        finished_lengths = take(jnp.concatenate([state.finished_lengths, jnp.full((b, kk), i + 1, jnp.int32)], 1))
        is_finished = take(jnp.concatenate([state.is_finished, just_finished], axis=1))

        # The early-stopping heuristic, evaluated with the new length (transformers increments cur_len first).
        generated = (i + 1).astype(jnp.float32)
        if spec.early_stopping == "never":
            best_len = jnp.where(length_penalty > 0.0, dp.max_new_tokens.astype(jnp.float32), generated)
        else:
            best_len = generated
        best_possible = running_scores[:, :1] / (best_len ** length_penalty)
        worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), -BIG)
        improvable = state.improvable & jnp.any(best_possible > worst_finished, axis=-1, keepdims=True)

        flat_origin = (jnp.arange(b)[:, None] * nb + origin).reshape(-1)
        seen_next = state.seen
        new_tokens = running.tokens[:, :, i].reshape(-1)
        if plan.repetition_penalty:
            seen_next = seen_next[flat_origin].at[jnp.arange(rows), new_tokens].set(True)
        counts = state.counts
        if plan.extra.counts:
            counts = X.count_tokens(counts[flat_origin], new_tokens, jnp.ones((rows,), bool))
        return state.replace(
            step=i + 1, running=running, running_scores=running_scores, finished=finished,
            finished_scores=finished_scores, finished_lengths=finished_lengths, is_finished=is_finished,
            improvable=improvable, all_candidates_stopped=jnp.all(stopped), seen=seen_next, counts=counts,
            nonfinite_step=nonfinite_step,
            cache=reorder_rows(state.cache, flat_origin), positions=state.positions[flat_origin])

    def cond(state: BeamState) -> Array:
        go = jnp.any(state.improvable) & ~state.all_candidates_stopped & (state.step < dp.max_new_tokens)
        if spec.early_stopping is True:
            go &= ~jnp.all(state.is_finished)
        return go

    def body(state: BeamState) -> BeamState:
        # Advance first, then run the model only if the search goes on: `advance` is traced once (compile time).
        state = advance(state, state.logits)
        last = jax.lax.dynamic_index_in_dim(state.running.tokens, state.step - 1, axis=2, keepdims=False)
        positions, logits, cache = model_if(cond(state), step, params, last.reshape(rows, 1), state.positions,
                                            state.cache, state.logits)
        return state.replace(positions=positions, logits=logits, cache=cache)

    return jax.lax.while_loop(cond, body, state)

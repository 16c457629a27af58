"""Logprobs recorded inside the compiled loop, against transformers' ``output_logits`` / ``output_scores``.

raw: ``token_logprobs`` and ``top_logprobs`` / ``top_token_ids`` equal the log-softmax of transformers' raw logits
(``output_logits=True``) at the chosen token / its k best tokens. processed: they equal
``compute_transition_scores(sequences, scores[, beam_indices], normalize_logits=True)`` and the k best of the
log-softmax of transformers' processed scores. Beams: the records are those of the beam each returned sequence
followed (``beam_indices``). Steps after a row ended hold 0 / -1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxgen
from conftest import left_pad, models

PROMPTS = [[5, 9, 17, 33, 4, 88, 21], [7, 8, 9]]
PAD, EOS, K, MAX_NEW = 3, 37, 5, 10
TOL = 1e-4


def run(mode: str, **kw):
    model, hf = models()
    ids, mask = left_pad(PROMPTS, PAD)
    kw = dict(max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=EOS, **kw)
    out = jaxgen.generate(model, ids, mask, top_logprobs=K, logprobs_mode=mode, **kw)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True, **kw)
    n = ref.sequences.shape[1]
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :n], ref.sequences.numpy())
    return out, ref, ids.shape[1]


def per_step(tensors, beam_indices: np.ndarray | None, rows: int) -> torch.Tensor:
    """``[rows, steps, V]``: the step-wise ``[B*nb, V]`` tensors, taken from the beam each row followed."""
    stacked = torch.stack(tensors, dim=1)  # [B*nb, steps, V]
    if beam_indices is None:
        return stacked
    idx = torch.tensor(np.maximum(beam_indices, 0), dtype=torch.long)[:, :stacked.shape[1]]
    return stacked[idx, torch.arange(idx.shape[1])[None, :]]


def check(out, ref, prompt_len: int, expected_lp: torch.Tensor, chosen_ref: np.ndarray | None = None) -> dict:
    """``expected_lp``: [rows, steps, V] log-probs the records must equal."""
    rows, steps = expected_lp.shape[:2]
    live = np.arange(steps)[None, :] < np.asarray(out.num_generated)[:, None]
    assert live[:, -1].sum() < rows, "no row ended early"  # EOS mid-way: the padded tail is checked too
    gen = torch.tensor(ref.sequences.numpy()[:, prompt_len:prompt_len + steps], dtype=torch.long)
    chosen = torch.gather(expected_lp, 2, gen[..., None])[..., 0].numpy() if chosen_ref is None else chosen_ref
    top_lp, top_ids = torch.topk(expected_lp, K, dim=-1)
    ours_lp = np.asarray(out.token_logprobs)[:, :steps]
    ours_top = np.asarray(out.top_logprobs)[:, :steps]
    ours_ids = np.asarray(out.top_token_ids)[:, :steps]
    d_chosen = np.abs(np.where(live, ours_lp - chosen, 0)).max()
    d_top = np.abs(np.where(live[..., None], ours_top - top_lp.numpy(), 0)).max()
    assert d_chosen <= TOL and d_top <= TOL, (d_chosen, d_top)
    np.testing.assert_array_equal(np.where(live[..., None], ours_ids, -1), np.where(live[..., None], top_ids, -1))
    # after the end: zeros and -1, also beyond transformers' cropped length
    dead = np.arange(MAX_NEW)[None, :] >= np.asarray(out.num_generated)[:, None]
    assert (np.asarray(out.token_logprobs)[dead] == 0).all() and (np.asarray(out.top_logprobs)[dead] == 0).all()
    assert (np.asarray(out.top_token_ids)[dead] == -1).all()
    assert out.top_token_ids.shape == out.top_logprobs.shape == (rows, MAX_NEW, K)
    return dict(chosen=d_chosen, top=d_top)


def test_greedy_raw_logprobs_are_log_softmax_of_logits():
    out, ref, t = run("raw")
    check(out, ref, t, torch.log_softmax(per_step(ref.logits, None, 2), -1))


def test_greedy_processed_logprobs_are_transition_scores():
    out, ref, t = run("processed", repetition_penalty=1.3)
    _, hf = models()
    ts = hf.compute_transition_scores(ref.sequences, ref.scores, normalize_logits=True).numpy()
    check(out, ref, t, torch.log_softmax(per_step(ref.scores, None, 2), -1), chosen_ref=ts)
    # the penalty makes processed and raw differ: the test tells the two modes apart
    raw = torch.log_softmax(per_step(ref.logits, None, 2), -1)
    assert not np.allclose(torch.log_softmax(per_step(ref.scores, None, 2), -1).numpy(), raw.numpy(), atol=1e-2)


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_beam_logprobs_follow_the_returned_beam(mode):
    out, ref, t = run(mode, num_beams=3, num_return_sequences=2, repetition_penalty=1.2)
    bi = ref.beam_indices.numpy()
    source = ref.logits if mode == "raw" else ref.scores
    expected = torch.log_softmax(per_step(source, bi, bi.shape[0]), -1)
    chosen_ref = None
    if mode == "processed":
        _, hf = models()
        chosen_ref = hf.compute_transition_scores(ref.sequences, ref.scores, ref.beam_indices,
                                                  normalize_logits=True).numpy()
    check(out, ref, t, expected, chosen_ref=chosen_ref)

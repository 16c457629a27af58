"""The checks every family passes (tests/conftest.py MATRIX: one tiny random checkpoint per family).

Per family, against transformers on a left-padded batch: the beam preset (``num_beams=3, repetition_penalty=1.2``)
gives the same tokens, scores and raw per-token logprobs along each returned beam; greedy with a repetition penalty
gives the same tokens and the same processed top-k logprobs; ``jaxgen.crosscheck`` calls it identical (the Llama
line is crosschecked in tests/test_crosscheck.py). Meshes: tests/test_family_mesh.py.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

import jaxgen
from conftest import FAMILIES, MATRIX, left_pad, matrix_checkpoint, matrix_models

PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60], [7, 8, 9]]
PAD, EOS, K, MAX_NEW = 3, 37, 5, 8
TOL = 1e-4
# Gated DeltaNet families: their random test models carry logits near 10 through the chunked delta rule (a
# triangular solve, cumulative decays), and transformers' own float32 forward is 5e-5 to 9e-5 away from its float64
# forward there (measured on the matrix models; tests/test_hybrid.py checks jaxgen against float64). Differences
# of a few times that are float32 summation order, not a model mismatch.
HYBRID = ("qwen3_5", "qwen3_5_moe", "qwen3_next")
HYBRID_TOL = 3e-4


def tol(name: str) -> float:
    return HYBRID_TOL if name in HYBRID else TOL
PRESET = dict(num_beams=3, num_return_sequences=3, repetition_penalty=1.2)


def _hf_generate(hf, ids, mask, **kw):
    with torch.no_grad():
        return hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                           do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True,
                           max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=EOS, **kw)


def _log_softmax(steps) -> np.ndarray:
    """``[rows, steps, V]`` float64 log-softmax of transformers' per-step ``[rows, V]`` tensors."""
    return torch.log_softmax(torch.stack(steps, 1).double(), -1).numpy()


def _live(out, steps: int) -> np.ndarray:
    return np.arange(steps)[None, :] < np.asarray(out.num_generated)[:, None]


@pytest.mark.parametrize("name", list(MATRIX))
def test_beam_preset_tokens_scores_and_logprobs(name):
    model, hf = matrix_models(name)
    ids, mask = left_pad(PROMPTS, PAD)
    out = jaxgen.generate(model, ids, mask, max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=EOS,
                          top_logprobs=K, logprobs_mode="raw", **PRESET)
    ref = _hf_generate(hf, ids, mask, **PRESET)
    n = ref.sequences.shape[1]
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :n], ref.sequences.numpy())
    np.testing.assert_allclose(np.asarray(out.sequences_scores), ref.sequences_scores.numpy(), atol=tol(name),
                               rtol=0)
    # Raw logprobs along the beam each returned sequence followed (transformers' beam_indices).
    raw = _log_softmax(ref.logits)  # [B * beams, steps, V]
    steps = raw.shape[1]
    beams = np.maximum(ref.beam_indices.numpy()[:, :steps], 0)
    path = raw[beams, np.arange(steps)[None, :]]  # [rows, steps, V]
    chosen = np.take_along_axis(path, ref.sequences.numpy()[:, ids.shape[1]:][..., None], -1)[..., 0]
    live = _live(out, steps)
    diff = np.abs(np.where(live, np.asarray(out.token_logprobs)[:, :steps] - chosen, 0)).max()
    top = np.sort(path, -1)[..., ::-1][..., :K]
    top_diff = np.abs(np.where(live[..., None], np.asarray(out.top_logprobs)[:, :steps] - top, 0)).max()
    assert diff <= tol(name) and top_diff <= tol(name), (name, diff, top_diff)


@pytest.mark.parametrize("name", list(MATRIX))
def test_greedy_processed_top_logprobs(name):
    model, hf = matrix_models(name)
    ids, mask = left_pad(PROMPTS, PAD)
    kw = dict(repetition_penalty=1.2)
    out = jaxgen.generate(model, ids, mask, max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=EOS,
                          top_logprobs=K, logprobs_mode="processed", **kw)
    ref = _hf_generate(hf, ids, mask, **kw)
    n = ref.sequences.shape[1]
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :n], ref.sequences.numpy())
    processed = _log_softmax(ref.scores)  # [B, steps, V]
    steps = processed.shape[1]
    live = _live(out, steps)
    top_lp = np.sort(processed, -1)[..., ::-1][..., :K]
    diff = np.abs(np.where(live[..., None], np.asarray(out.top_logprobs)[:, :steps] - top_lp, 0)).max()
    assert diff <= tol(name), (name, diff)
    # Ids: wherever the k-th and (k+1)-th candidates are not tied, the k best ids are transformers' k best.
    order = np.argsort(-processed, -1, kind="stable")[..., :K]
    ours = np.asarray(out.top_token_ids)[:, :steps]
    gaps = np.diff(np.sort(processed, -1)[..., ::-1][..., :K + 1], axis=-1)
    clear = live[..., None] & (np.abs(gaps[..., :K]) > 1e-6)
    assert (np.where(clear, ours == order, True)).all(), name


@pytest.mark.parametrize("name", [n for n in MATRIX if n not in FAMILIES])
def test_crosscheck_is_identical(name):
    from jaxgen.crosscheck.compare import compare

    folder, hf = matrix_checkpoint(name)
    model, _ = matrix_models(name)
    report = compare(folder, [PROMPTS[0]], modes=("greedy",), max_new_tokens=MAX_NEW, hf_model=hf, jax_model=model)
    assert not report.has_mismatch and {r.verdict for r in report.results} == {"identical"}, report.table()
    for r in report.results:
        assert r.prefill_max_abs_diff < tol(name) and r.logprob_max_abs_diff < tol(name), report.table()

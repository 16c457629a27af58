"""Beam search: the same ``sequences`` and ``sequences_scores`` (<= 1e-4) as transformers' ``_beam_search``.

Static settings (num_beams, early_stopping, num_return_sequences, EOS ids) cost one compilation each, so the
cases below cover every value of each axis without the full product; ``length_penalty`` is a traced value, so
each case runs all four values through one compiled program (and checks that it did not recompile).

The EOS ids are tokens that the model's beams produce after 3-6 steps, so hypotheses finish at different
lengths, early stopping and the length penalty decide the result, and the left-padded row differs from the
other. ``pad_token_id=3``: transformers fills finished beams with ``pad_token_id or eos_token_id[0]``, i.e. with
EOS when the pad id is 0; jaxgen always pads with ``pad_token_id``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxgen
from conftest import left_pad, models

PROMPTS = [[5, 9, 17, 33, 4, 88, 21], [7, 8, 9]]
PAD = 3
MAX_NEW = 12
LENGTH_PENALTIES = [0.0, 0.5, 1.0, 2.0]


def compare(ids, mask, **kw):
    model, hf = models()
    out = jaxgen.generate(model, ids, mask, **kw)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          return_dict_in_generate=True, output_scores=True, **{"do_sample": False, **kw})
    seq, rs = np.asarray(out.sequences), ref.sequences.numpy()
    n = rs.shape[1]
    np.testing.assert_array_equal(seq[:, :n], rs)
    np.testing.assert_array_equal(seq[:, n:], kw["pad_token_id"])
    np.testing.assert_allclose(np.asarray(out.sequences_scores), ref.sequences_scores.numpy(), rtol=0, atol=1e-4)
    # num_generated: tokens up to and including EOS, as transformers' beam_indices count them
    np.testing.assert_array_equal(np.asarray(out.num_generated), (ref.beam_indices.numpy() >= 0).sum(1))
    return out


# (num_beams, early_stopping, num_return_sequences, eos_token_id): every value of every axis at least once.
CASES = [
    (2, False, 2, 37),
    (3, True, 1, 37),
    (4, "never", 2, [37, 12]),
]


@pytest.mark.parametrize("num_beams,early_stopping,num_return_sequences,eos", CASES)
def test_beam_search_matches_transformers(num_beams, early_stopping, num_return_sequences, eos):
    ids, mask = left_pad(PROMPTS, PAD)
    finished_early = 0
    for i, lp in enumerate(LENGTH_PENALTIES):
        out = compare(ids, mask, num_beams=num_beams, early_stopping=early_stopping,
                      num_return_sequences=num_return_sequences, eos_token_id=eos, length_penalty=lp,
                      max_new_tokens=MAX_NEW, pad_token_id=PAD)
        assert out.sequences.shape == (2 * num_return_sequences, ids.shape[1] + MAX_NEW)
        finished_early += int((np.asarray(out.num_generated) < MAX_NEW).sum())
        if i == 0:
            compiled = jaxgen.compile_count()
        assert jaxgen.compile_count() == compiled, "changing length_penalty recompiled"
    assert finished_early > 0, "no hypothesis ended with EOS: the case does not exercise early stopping"


def test_preset_num_beams_3_repetition_penalty():
    ids, mask = left_pad(PROMPTS, PAD)
    compare(ids, mask, do_sample=False, num_beams=3, repetition_penalty=1.2, max_new_tokens=MAX_NEW,
            pad_token_id=PAD)

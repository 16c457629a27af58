"""Greedy decoding: token-for-token the same ``sequences`` as ``transformers.generate(do_sample=False)``.

Tiny random models (conftest) have decisive logits. transformers crops its output to the longest row; jaxgen
returns ``max_new_tokens`` columns, so the prefix must be equal and the rest padding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxgen
from conftest import FAMILIES, left_pad, models

# Mixed lengths, left-padded into one batch (the second row has 4 padding tokens).
PROMPTS = [[5, 9, 17, 33, 4, 88, 21], [7, 8, 9], [40, 41, 42, 43, 44]]
MAX_NEW = 10


def hf_generate(hf, ids, mask, **kw) -> np.ndarray:
    mask = np.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          do_sample=False, **kw)
    return out.numpy()


def assert_same_sequences(out, ref: np.ndarray, pad: int) -> None:
    seq = np.asarray(out.sequences)
    n = ref.shape[1]
    assert seq.shape[1] >= n
    np.testing.assert_array_equal(seq[:, :n], ref)
    np.testing.assert_array_equal(seq[:, n:], pad)


def compare(variant: str, ids, mask, **kw):
    model, hf = models(variant)
    out = jaxgen.generate(model, ids, mask, **kw)
    ref = hf_generate(hf, ids, mask, **kw)
    assert_same_sequences(out, ref, kw["pad_token_id"])
    # num_generated: up to and including the first EOS, else max_new_tokens
    eos = kw.get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else eos
    new = np.asarray(out.sequences)[:, ids.shape[1]:]
    hit = np.isin(new, eos)
    expected = np.where(hit.any(1), hit.argmax(1) + 1, kw["max_new_tokens"])
    np.testing.assert_array_equal(np.asarray(out.num_generated), expected)
    return out, ref


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_with_eos_midway(family):
    ids, mask = left_pad(PROMPTS, pad=0)
    _, hf = models(family)
    # EOS = the token the first row generates at step 3, so that row stops mid-way while the others go on.
    free = hf_generate(hf, ids, mask, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=None)
    eos = int(free[0, ids.shape[1] + 3])
    out, _ = compare(family, ids, mask, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=eos)
    n = np.asarray(out.num_generated)
    assert n[0] <= 4 and n.max() == MAX_NEW, n
    assert out.sequences.shape == (3, ids.shape[1] + MAX_NEW)


def test_single_prompt_beyond_the_smallest_buckets():
    # 17 prompt tokens and 20 new ones: both sizes fall in the second bucket (32)
    ids = np.array([[11, 23, 5, 77, 3, 19, 64, 90, 12, 1, 44, 45, 101, 7, 7, 7, 30]], np.int32)
    out, _ = compare("llama_gqa", ids, None, max_new_tokens=20, pad_token_id=0)  # no mask: no padding
    assert out.sequences.shape == (1, 17 + 20) and int(out.num_generated[0]) == 20


def _free_run(ids, mask) -> np.ndarray:
    _, hf = models("llama_gqa")
    return hf_generate(hf, ids, mask, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]


@pytest.mark.parametrize("min_new_tokens", [2, 6])
def test_multiple_eos_ids_and_min_new_tokens(min_new_tokens):
    ids, mask = left_pad(PROMPTS, pad=0)
    free = _free_run(ids, mask)
    # Two EOS ids, generated freely at steps 2 and 3 by different rows (transformers: any of them stops a row).
    eos = sorted({int(free[0, 3]), int(free[1, 2])})
    assert len(eos) == 2
    out, _ = compare("llama_gqa", ids, mask, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=eos,
                     min_new_tokens=min_new_tokens)
    n = np.asarray(out.num_generated)
    assert n.min() >= min_new_tokens
    if min_new_tokens == 2:  # both EOS ids end rows early
        assert n[0] <= 4 and n[1] <= 3, n


@pytest.mark.parametrize("penalty", [1.5, 0.8])
def test_repetition_penalty_with_padding(penalty):
    # The pad id is the token the padded row would pick first: if padding were penalised (transformers < 5 or a
    # bug), its first token would differ.
    _, hf = models("llama_gqa")
    ids, mask = left_pad(PROMPTS, pad=0)
    first = _free_run(ids, mask)[1, 0]
    pad = int(first) if penalty > 1 else 3
    ids, mask = left_pad(PROMPTS, pad=pad)
    out, ref = compare("llama_gqa", ids, mask, max_new_tokens=MAX_NEW, pad_token_id=pad, eos_token_id=None,
                       repetition_penalty=penalty)
    if penalty > 1:
        with torch.no_grad():
            r = hf.generate(torch.tensor(ids[1:2, -3:], dtype=torch.long), do_sample=False, max_new_tokens=1,
                            repetition_penalty=penalty, pad_token_id=pad, eos_token_id=None,
                            return_dict_in_generate=True, output_logits=True)
        logits = r.logits[0][0].numpy()
        top2 = np.sort(logits)[-2:]
        penalised = top2[1] / penalty if top2[1] > 0 else top2[1] * penalty
        assert logits.argmax() == pad and penalised < top2[0], "pad token would not be decisive"
        assert ref[1, ids.shape[1]] == pad

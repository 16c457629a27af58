"""Sampling: the distribution each token is drawn from, reproducibility, and independence from batch neighbours.

- teacher-forced: jaxgen's sampled sequences are fed to transformers, whose own ``LogitsProcessorList`` for the
  same config (repetition penalty, min-new-tokens, temperature, top-k, top-p, min-p) gives the processed scores; their
  log-softmax at the sampled tokens equals jaxgen's processed ``token_logprobs`` (<= 1e-4).
- frequencies: many first tokens (one row per key) follow transformers' processed distribution (chi-square).
- determinism, batch invariance, ``num_return_sequences > 1`` and replaying ``out.keys``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from scipy import stats

import jaxgen
from conftest import hf_processors, left_pad, models, teacher_forced_logprobs

# Four left-padded prompts of mixed lengths; the first is longer than 16 tokens, so the batch's bucket (32) differs
# from that of a short prompt alone (16): a row sees a different amount of padding in and out of the batch.
PROMPTS = [list(range(20, 38)), [7, 8, 9], [40, 41, 42, 43, 44], [100, 5, 61]]
MAX_NEW = 12
# Every processor on (one compiled program); the values are traced, so both configs share it.
CONFIGS = {
    "A": dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2, min_new_tokens=3),
    "B": dict(temperature=1.5, top_k=8, top_p=0.8, min_p=0.1, repetition_penalty=0.9, min_new_tokens=5),
}
TOL = 1e-4


def sample(ids, mask, key, **kw):
    model, _ = models()
    return jaxgen.generate(model, ids, mask, key=key, do_sample=True, max_new_tokens=MAX_NEW, pad_token_id=0,
                           logprobs_mode="processed", **kw)


def assert_teacher_forced(out, ids, mask, **kw) -> float:
    expected = teacher_forced_logprobs(models()[1], out, ids, mask, MAX_NEW, **kw)
    ours = np.asarray(out.token_logprobs)
    live = ~np.isnan(expected)
    assert np.isfinite(expected[live]).all(), "jaxgen sampled a token that transformers' processors exclude"
    diff = np.abs(ours[live] - expected[live]).max()
    assert diff <= TOL, diff
    assert (ours[~live] == 0).all()
    return float(diff)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_forced_processed_logprobs_match_transformers(name):
    ids, mask = left_pad(PROMPTS)
    out = sample(ids, mask, jax.random.key(7), **CONFIGS[name])
    assert (np.asarray(out.sequences)[:, :ids.shape[1]] == ids).all()
    assert_teacher_forced(out, ids, mask, **CONFIGS[name])


def test_same_key_is_bit_identical_and_other_keys_differ():
    ids, mask = left_pad(PROMPTS)
    a = sample(ids, mask, jax.random.key(3), **CONFIGS["B"])
    b = sample(ids, mask, jax.random.key(3), **CONFIGS["B"])
    c = sample(ids, mask, jax.random.key(4), **CONFIGS["B"])
    for field in ("sequences", "token_logprobs", "top_token_ids", "top_logprobs", "num_generated", "keys"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), err_msg=field)
    assert not np.array_equal(np.asarray(a.sequences), np.asarray(c.sequences))


def test_row_alone_equals_row_in_padded_batch():
    ids, mask = left_pad(PROMPTS)
    keys = jax.random.split(jax.random.key(11), 4)
    batch = sample(ids, mask, keys, **CONFIGS["B"])
    row = 1  # [7, 8, 9]: 15 padding tokens in the batch (bucket 32), 13 alone (bucket 16)
    alone = sample(np.asarray([PROMPTS[row]], np.int32), None, keys[row:row + 1], **CONFIGS["B"])
    t = ids.shape[1]
    np.testing.assert_array_equal(np.asarray(alone.new_tokens)[0], np.asarray(batch.new_tokens)[row])
    np.testing.assert_allclose(np.asarray(alone.token_logprobs)[0], np.asarray(batch.token_logprobs)[row],
                               atol=1e-5)
    assert int(alone.num_generated[0]) == int(batch.num_generated[row])
    assert alone.sequences.shape == (1, 3 + MAX_NEW) and batch.sequences.shape == (4, t + MAX_NEW)
    # the rows' keys are the given ones: a row's draw does not depend on its neighbours
    np.testing.assert_array_equal(np.asarray(batch.keys), np.asarray(jax.random.key_data(keys)))


def test_num_return_sequences_and_replaying_keys():
    ids, mask = left_pad(PROMPTS[:2])
    out = sample(ids, mask, jax.random.key(5), num_return_sequences=2, **CONFIGS["B"])
    t = ids.shape[1]
    seq = np.asarray(out.sequences)
    assert seq.shape == (4, t + MAX_NEW)
    np.testing.assert_array_equal(seq[:, :t], np.repeat(ids, 2, axis=0))  # a prompt's returns are adjacent
    assert not np.array_equal(seq[0, t:], seq[1, t:]) and not np.array_equal(seq[2, t:], seq[3, t:])
    rep_ids, rep_mask = np.repeat(ids, 2, axis=0), np.repeat(mask, 2, axis=0)
    assert_teacher_forced(out, rep_ids, rep_mask, **CONFIGS["B"])
    # out.keys (one per returned row) repeat each row's draw with num_return_sequences=1
    again = sample(rep_ids, rep_mask, jax.random.wrap_key_data(out.keys), **CONFIGS["B"])
    np.testing.assert_array_equal(np.asarray(again.sequences), seq)
    np.testing.assert_array_equal(np.asarray(again.token_logprobs), np.asarray(out.token_logprobs))


# Both run through one compiled program. "top-k, top-p": top-k keeps 18 tokens, top-p cuts them to 14;
# "min-p": top-k/top-p barely act, min-p keeps 12 tokens of 119.
FREQUENCY_CONFIGS = {
    "top-k, top-p": dict(temperature=0.8, top_k=18, top_p=0.9, min_p=0.05, repetition_penalty=1.1),
    "min-p": dict(temperature=1.3, top_k=128, top_p=0.999, min_p=0.3, repetition_penalty=1.1),
}


@pytest.mark.parametrize("name", list(FREQUENCY_CONFIGS))
def test_first_token_frequencies_follow_processed_distribution(name):
    n = 2048
    kw = FREQUENCY_CONFIGS[name]
    prompt = np.asarray([[7, 8, 9, 10]], np.int32)
    model, hf = models()
    out = jaxgen.generate(model, np.repeat(prompt, n, axis=0), None, key=jax.random.split(jax.random.key(0), n),
                          do_sample=True, max_new_tokens=1, pad_token_id=0, eos_token_id=None, **kw)
    drawn = np.asarray(out.sequences)[:, -1]
    with torch.no_grad():
        logits = hf(torch.tensor(prompt, dtype=torch.long)).logits[:, -1].float()
    procs = hf_processors(hf, np.ones_like(prompt), prompt.shape[1], **kw)
    probs = torch.softmax(procs(torch.tensor(prompt, dtype=torch.long), logits), -1)[0].double().numpy()
    support = np.flatnonzero(probs > 0)
    assert 10 <= support.size <= 16, support.size  # a small, non-trivial support
    assert np.isin(drawn, support).all(), "drew a token outside transformers' kept set"
    counts = np.bincount(drawn, minlength=probs.size)[support]
    expected = probs[support] / probs[support].sum() * n
    # merge categories with expected counts < 5 (chi-square validity) into one
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    p_value = stats.chisquare(counts, expected).pvalue
    assert p_value > 1e-3, (p_value, counts, expected)

"""A vocabulary of 2048 (conftest ``BIG_VOCAB``): the paths that the 128-token test models never take, against
transformers.

- sampling with ``top_k=50``: top-k / top-p run on the 64 best tokens (``candidate_count``), not the whole
  vocabulary. Teacher-forced: transformers' processed log-softmax at jaxgen's sampled tokens and its 5 best equal
  jaxgen's processed ``token_logprobs`` / ``top_logprobs``; through the shared-uniform sampler transformers'
  ``generate(do_sample=True)`` draws the same tokens.
- the per-row CPU top-k (``jaxgen/decode/topk.py``: rows of more than 256 entries in a batch go one at a time):
  sampling's candidates, greedy ``top_logprobs`` (against ``output_logits`` / ``output_scores``) and ``score``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import jaxgen
from conftest import BIG_VOCAB, left_pad, models, teacher_forced_scores
from jaxgen.crosscheck.hf_uniform_sampler import sampling_kwargs, uniforms_for
from jaxgen.decode.processors import candidate_count

VOCAB = 2048
PROMPTS = [[5, 900, 17, 1500, 4, 88, 21], [7, 2000, 9], [40, 41, 1042, 43, 1999]]
PAD, K, MAX_NEW = 0, 5, 10
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)
# float32 against float32: logits of std ~3 over 2048 tokens differ by up to ~1.5e-5 after log-softmax (measured);
# every mismatch of the paths under test (a token kept or dropped, a wrong id) is of order 1 or -inf.
TOL = 5e-5


def test_the_model_takes_the_big_vocabulary_paths():
    model, hf = models(BIG_VOCAB)
    assert model.config.vocab_size == hf.config.vocab_size == VOCAB
    assert candidate_count(SAMPLING["top_k"], VOCAB) == 64  # the candidate path (0 would be the whole vocabulary)
    assert len(PROMPTS) > 1 and VOCAB > 256  # topk.py's per-row CPU path: several rows of more than 256


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_candidate_sampling_matches_transformers(seed):
    model, hf = models(BIG_VOCAB)
    ids, mask = left_pad(PROMPTS, PAD)
    out = jaxgen.generate(model, ids, mask, key=jax.random.key(seed), do_sample=True, max_new_tokens=MAX_NEW,
                          pad_token_id=PAD, eos_token_id=None, logprobs_mode="processed", top_logprobs=K,
                          **SAMPLING)
    assert (np.asarray(out.num_generated) == MAX_NEW).all()

    # Teacher-forced: transformers' processed distribution at every step of jaxgen's sequences.
    expected = teacher_forced_scores(hf, out, ids, mask, MAX_NEW, pad_token_id=PAD, eos_token_id=None, **SAMPLING)
    new = np.asarray(out.new_tokens)[:, :MAX_NEW]
    chosen = np.take_along_axis(expected, new[..., None], axis=-1)[..., 0]
    assert np.isfinite(chosen).all(), "jaxgen sampled a token that transformers' processors exclude"
    np.testing.assert_allclose(np.asarray(out.token_logprobs), chosen, rtol=0, atol=TOL)
    order = np.argsort(-expected, axis=-1, kind="stable")[..., :K]
    np.testing.assert_array_equal(np.asarray(out.top_token_ids), order)
    np.testing.assert_allclose(np.asarray(out.top_logprobs), np.take_along_axis(expected, order, -1), rtol=0,
                               atol=TOL)
    # Both filters act: top-k changes the kept set (top-p alone would keep more than 50 tokens at some step) and
    # top-p cuts inside the 50.
    kept = np.isfinite(expected).sum(-1)
    without_top_k = teacher_forced_scores(hf, out, ids, mask, MAX_NEW, pad_token_id=PAD, eos_token_id=None,
                                          **{**SAMPLING, "top_k": 0})
    assert (np.isfinite(without_top_k).sum(-1) > 50).any() and (kept > 1).all() and (kept < 50).any(), kept

    # Shared uniforms: transformers' own generate(do_sample=True) draws jaxgen's tokens.
    kwargs, sampler = sampling_kwargs(uniforms_for(out.keys, MAX_NEW), ids.shape[1], **SAMPLING)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=None, **kwargs)
    np.testing.assert_array_equal(ref[:, ids.shape[1]:].numpy(), new)
    np.testing.assert_array_equal(sampler.chosen, new)


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_greedy_top_logprobs_match_transformers(mode):
    model, hf = models(BIG_VOCAB)
    ids, mask = left_pad(PROMPTS, PAD)
    # processed: a repetition penalty makes transformers' scores differ from its logits
    kw = dict(max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=None,
              repetition_penalty=1.0 if mode == "raw" else 1.3)
    out = jaxgen.generate(model, ids, mask, do_sample=False, top_logprobs=K, logprobs_mode=mode, **kw)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True,
                          **kw)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref.sequences.numpy())
    expected = torch.log_softmax(torch.stack(ref.logits if mode == "raw" else ref.scores, dim=1), -1)
    top_lp, top_ids = torch.topk(expected, K, dim=-1)
    new = torch.tensor(np.asarray(out.new_tokens), dtype=torch.long)
    np.testing.assert_allclose(np.asarray(out.token_logprobs), expected.gather(2, new[..., None])[..., 0].numpy(),
                               rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.asarray(out.top_token_ids), top_ids.numpy())
    np.testing.assert_allclose(np.asarray(out.top_logprobs), top_lp.numpy(), rtol=0, atol=TOL)


def test_score_top_logprobs_match_transformers():
    model, hf = models(BIG_VOCAB)
    rng = np.random.RandomState(0)
    ids, mask = left_pad([rng.randint(3, VOCAB, size=n).tolist() for n in (21, 9, 15)], PAD)
    out = jaxgen.score(model, ids, mask, top_logprobs=K)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    positions = (mask_t.cumsum(-1) - 1).masked_fill(mask_t == 0, 1)
    with torch.no_grad():
        logits = hf(input_ids=ids_t, attention_mask=mask_t, position_ids=positions).logits
    expected = torch.log_softmax(logits.double(), -1).numpy()  # [B, T, V]: position t predicts token t + 1
    lp, top_ids, top_lp = (np.asarray(x) for x in (out.token_logprobs, out.top_token_ids, out.top_logprobs))
    for b in range(ids.shape[0]):
        real = np.flatnonzero(mask[b])[1:]  # a row's first token has no prediction
        want = expected[b, real - 1]
        np.testing.assert_allclose(lp[b, real], want[np.arange(real.size), ids[b, real]], rtol=0, atol=TOL)
        order = np.argsort(-want, axis=-1, kind="stable")[:, :K]
        np.testing.assert_array_equal(top_ids[b, real], order)
        np.testing.assert_allclose(top_lp[b, real], np.take_along_axis(want, order, -1), rtol=0, atol=TOL)

"""``jaxgen.score`` against transformers' teacher-forced log-softmax."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import jaxgen
from conftest import hf_checkpoint
from jaxgen.api import scoring
from jaxgen.api.scoring import forward_logits, score

K = 4


@functools.lru_cache(maxsize=None)
def _model(variant: str):
    return jaxgen.load_model(hf_checkpoint(variant)[0])


def _hf_logprobs(hf, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 [B, T-1, V] log-softmax of transformers' logits (positions as its generate: cumsum(mask) - 1)."""
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    positions = (mask_t.cumsum(-1) - 1).masked_fill(mask_t == 0, 1)
    with torch.no_grad():
        logits = hf(input_ids=ids_t, attention_mask=mask_t, position_ids=positions).logits
    return torch.log_softmax(logits[:, :-1].double(), dim=-1).numpy()


def _check_against_hf(out, hf_lp: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> None:
    lp = np.asarray(out.token_logprobs)
    top_ids, top_lp = np.asarray(out.top_token_ids), np.asarray(out.top_logprobs)
    for b in range(ids.shape[0]):
        real = np.flatnonzero(mask[b])
        undefined = np.setdiff1d(np.arange(ids.shape[1]), real[1:])
        assert np.isnan(lp[b, undefined]).all() and (top_ids[b, undefined] == -1).all()
        for t in real[1:]:
            expected = hf_lp[b, t - 1]
            assert abs(lp[b, t] - expected[ids[b, t]]) <= 1e-4
            order = np.argsort(-expected, kind="stable")[:K]
            np.testing.assert_allclose(top_lp[b, t], expected[order], atol=1e-4)
            # Same ids, except where two alternatives are tied within rounding.
            same = top_ids[b, t] == order
            assert same.all() or np.all(np.abs(top_lp[b, t][~same] - expected[top_ids[b, t][~same]]) <= 1e-4)


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2_bias"])
def test_score_equals_transformers_log_softmax(variant):
    _, hf = hf_checkpoint(variant)
    model = _model(variant)
    ids = np.random.RandomState(0).randint(3, 128, size=(1, 21)).astype(np.int32)
    ids[0, 0] = 1
    mask = np.ones_like(ids)
    out = score(model, ids, top_logprobs=K)
    assert out.token_logprobs.shape == (1, 21) and out.top_token_ids.shape == (1, 21, K)
    _check_against_hf(out, _hf_logprobs(hf, ids, mask), ids, mask)
    total = float(out.total_logprob()[0])
    assert total == pytest.approx(float(np.nansum(np.asarray(out.token_logprobs))), rel=1e-6)


def test_score_left_padded_batch_matches_transformers_and_rows_alone():
    _, hf = hf_checkpoint("llama_gqa")
    model = _model("llama_gqa")
    rng = np.random.RandomState(1)
    rows = [rng.randint(3, 128, size=n).tolist() for n in (21, 9, 15)]
    t = max(map(len, rows))
    ids, mask = np.zeros((3, t), np.int32), np.zeros((3, t), np.int32)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    out = score(model, ids, mask, top_logprobs=K)
    _check_against_hf(out, _hf_logprobs(hf, ids, mask), ids, mask)
    # A left-padded row scores like the same row alone (position ids count real tokens only); right padding
    # (the same bucketed shape, so the same program) works too.
    alone_ids, alone_mask = np.zeros((1, t), np.int32), np.zeros((1, t), np.int32)
    alone_ids[0, :9], alone_mask[0, :9] = rows[1], 1
    alone = score(model, alone_ids, alone_mask, top_logprobs=K)
    np.testing.assert_allclose(np.asarray(out.token_logprobs)[1, t - 9:], np.asarray(alone.token_logprobs)[0, :9],
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.top_logprobs)[1, t - 9:], np.asarray(alone.top_logprobs)[0, :9],
                               atol=1e-5)
    assert np.isnan(np.asarray(alone.token_logprobs)[0, 9:]).all()


def test_forward_logits_match_transformers_and_lengths_share_a_program():
    _, hf = hf_checkpoint("llama_gqa")
    model = _model("llama_gqa")
    ids = np.random.RandomState(2).randint(3, 128, size=(1, 12))
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward_logits(model, ids)), expected, atol=1e-4)
    # Lengths 17 and 30 share the length bucket 32, batches 3 and 4 the batch bucket 4: no new compilation.
    score(model, np.ones((3, 17), np.int32), top_logprobs=K)
    before = scoring._score._cache_size()
    score(model, np.ones((4, 30), np.int32), top_logprobs=K)
    assert scoring._score._cache_size() == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_ids=np.zeros((1, 0), np.int32)), "empty"),
    (dict(input_ids=np.ones((1, 4), np.int32), attention_mask=np.asarray([[1, 0, 1, 1]])), "contiguous"),
    (dict(input_ids=np.ones((1, 4), np.int32), attention_mask=np.zeros((1, 4), np.int32)), "no tokens"),
    (dict(input_ids=np.full((1, 4), 500, np.int32)), "vocab_size"),
    (dict(input_ids=np.ones((1, 4), np.float32)), "integer"),
    (dict(input_ids=np.ones((1, 4), np.int32), top_logprobs=129), "top_logprobs"),
])
def test_score_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        score(_model("llama_gqa"), **kwargs)

"""A caller with ``jax_enable_x64`` on gets what a 32-bit caller gets (jaxgen.x64): same tokens, logprobs, scores."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen

PROMPTS = [[1, 5, 9, 20], [4, 4, 7]]
MODES = {"greedy": dict(do_sample=False, top_logprobs=3),
         "sampling": dict(do_sample=True, temperature=0.8, top_p=0.9, top_logprobs=3),
         "beam": dict(do_sample=False, num_beams=3, repetition_penalty=1.2)}


@functools.lru_cache(maxsize=None)
def bundled():
    return jaxgen.load_model()


def _generate(mode: str):
    ids = np.array([[0] + PROMPTS[0], [0, 0] + PROMPTS[1]], np.int64)  # int64, as numpy makes them under x64
    mask = (ids != 0).astype(np.int64)
    return jaxgen.generate(bundled(), ids, mask, key=jax.random.key(3), max_new_tokens=6, pad_token_id=0,
                           **MODES[mode])


@pytest.mark.parametrize("mode", list(MODES))
def test_generate_under_x64_equals_32_bit(mode):
    want = _generate(mode)
    with jax.enable_x64(True):
        got = _generate(mode)
    np.testing.assert_array_equal(np.asarray(got.sequences), np.asarray(want.sequences))
    for field in ("token_logprobs", "top_logprobs", "sequences_scores"):
        if getattr(want, field) is not None:
            np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))
    assert np.asarray(got.sequences).dtype == np.int32


def test_score_engine_and_step_under_x64():
    model = bundled()
    ids = np.array([PROMPTS[0]], np.int64)
    tokens, positions = jnp.asarray(ids, jnp.int32), jnp.arange(4, dtype=jnp.int32)[None]
    want_score = np.asarray(jaxgen.score(model, ids).token_logprobs)
    want_logits, _ = jax.jit(model.step)(model.params, tokens, positions, model.init_cache(1, 8),
                                         jnp.ones((1, 4), jnp.int32))
    engine_kw = dict(max_new_tokens=5, do_sample=True, temperature=0.7)
    keys = [jax.random.key(1), jax.random.key(2)]
    want_engine = [np.asarray(o.sequences) for o in jaxgen.Engine(model, max_slots=2).generate(PROMPTS, keys=keys,
                                                                                              **engine_kw)]
    with jax.enable_x64(True):
        np.testing.assert_array_equal(np.asarray(jaxgen.score(model, ids).token_logprobs), want_score)
        got_logits, _ = jax.jit(model.step)(model.params, jnp.asarray(ids), jnp.arange(4)[None],
                                            model.init_cache(1, 8), jnp.ones((1, 4), jnp.int64))
        engine = jaxgen.Engine(model, max_slots=2)
        streamed = dict(engine.stream(PROMPTS, keys=keys, **engine_kw))
    np.testing.assert_array_equal(np.asarray(got_logits), np.asarray(want_logits))
    for i, want in enumerate(want_engine):
        np.testing.assert_array_equal(np.asarray(streamed[i].sequences), want)

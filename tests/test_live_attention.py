"""Attention over only the written part of a long cache (jaxgen.nn.attention ``_live_attention``: chunks of
``LIVE_CHUNK`` slots, ``DECODE_CHUNK`` in one-token steps, with a running softmax, used once a cache has
``LIVE_MIN_CAPACITY`` slots) equals attention over every slot: the same logits step by step, and ``generate``
with ``max_new_tokens`` in the thousands stopping early gives the tokens and logprobs of a short call. Families
with a sliding window, soft-capping (Gemma 2) and attention sinks (gpt-oss)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from conftest import left_pad, matrix_models
from jaxgen.decode.loop import prompt_positions
from jaxgen.nn.attention import LIVE_CHUNK, LIVE_MIN_CAPACITY

NAMES = ["llama_gqa", "mistral_window", "gemma2", "gpt_oss"]
PROMPTS = [[5, 9, 17, 33, 4, 88, 21, 60, 3, 99, 12], [7, 8, 9, 40, 41]]


def _steps(model, cache) -> list[np.ndarray]:
    """Logits of a prefill of PROMPTS (real positions only) then three one-token steps, on ``cache``."""
    ids, mask = left_pad(PROMPTS)
    pos = prompt_positions(jnp.asarray(mask))
    out, cache = model.step(model.params, jnp.asarray(ids), pos, cache, jnp.asarray(mask))
    seq, p = [np.asarray(out)[mask.astype(bool)]], pos[:, -1:] + 1
    for token in (11, 23, 5):
        out, cache = model.step(model.params, jnp.full((2, 1), token, jnp.int32), p, cache, jnp.ones((2, 1), jnp.int32))
        seq.append(np.asarray(out))
        p = p + 1
    return seq



@pytest.mark.parametrize("name", NAMES)
def test_long_cache_steps_equal_short_cache_steps(name):
    model, _ = matrix_models(name)
    # a prefill written at a nonzero slot too (the engine's layout), and a capacity that is not a chunk multiple
    big_capacity = LIVE_MIN_CAPACITY + LIVE_CHUNK // 2 + 3
    # slots 0..2 stay invalid
    short, long = (_steps(model, model.init_cache(2, c).replace(index=jnp.int32(3))) for c in (32, big_capacity))
    for a, b in zip(short, long):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama_gqa", "gpt_oss"])
def test_generate_with_a_long_budget_stopping_early_equals_a_short_call(name):
    """``max_new_tokens=2000`` (a cache of ~2000 slots, the live path) with an EOS that ends row 0 after a few
    steps gives the tokens and logprobs of ``max_new_tokens=12`` (every slot read) for the rows that stopped."""
    model, _ = matrix_models(name)
    ids, mask = left_pad(PROMPTS)
    kw = dict(do_sample=False, repetition_penalty=1.2, top_logprobs=2, pad_token_id=3)
    probe = jaxgen.generate(model, ids, mask, max_new_tokens=12, eos_token_id=None, **kw)
    eos = int(np.asarray(probe.new_tokens)[0, 6])  # row 0 stops at its 7th token (or earlier)
    short = jaxgen.generate(model, ids, mask, max_new_tokens=12, eos_token_id=eos, **kw)
    long = jaxgen.generate(model, ids, mask, max_new_tokens=2000, eos_token_id=eos, **kw)
    n = np.asarray(short.num_generated)
    np.testing.assert_array_equal(np.asarray(long.num_generated)[0], n[0])
    rows = np.flatnonzero(n < 12)  # rows that stopped inside the short budget
    assert 0 in rows
    for r in rows:
        k = int(n[r])
        np.testing.assert_array_equal(np.asarray(long.new_tokens)[r, :k], np.asarray(short.new_tokens)[r, :k])
        np.testing.assert_allclose(np.asarray(long.token_logprobs)[r, :k], np.asarray(short.token_logprobs)[r, :k],
                                   atol=1e-4)


@pytest.mark.parametrize("name", ["gemma2", "gpt_oss"])
@pytest.mark.parametrize("mode", ["greedy", "beam", "sample"])
def test_every_mode_is_the_same_on_the_live_path(name, mode, monkeypatch):
    """The same call with the live path forced on (``LIVE_MIN_CAPACITY = 0``) and off: equal tokens, logprobs and
    beam scores in greedy, beam search and sampling."""
    import jax

    from jaxgen.nn import attention

    model, _ = matrix_models(name)
    ids, mask = left_pad(PROMPTS)
    kw = dict(max_new_tokens=10, repetition_penalty=1.2, top_logprobs=2, pad_token_id=3, eos_token_id=None,
              do_sample=mode == "sample", num_beams=3 if mode == "beam" else 1)
    key = jax.random.key(5) if mode == "sample" else None
    jax.clear_caches()  # the flag is read when a program is traced
    full = jaxgen.generate(model, ids, mask, key=key, **kw)
    monkeypatch.setattr(attention, "LIVE_MIN_CAPACITY", 0)
    jax.clear_caches()
    live = jaxgen.generate(model, ids, mask, key=key, **kw)
    jax.clear_caches()
    np.testing.assert_array_equal(np.asarray(live.sequences), np.asarray(full.sequences))
    np.testing.assert_allclose(np.asarray(live.token_logprobs), np.asarray(full.token_logprobs), atol=1e-4)
    if mode == "beam":
        np.testing.assert_allclose(np.asarray(live.sequences_scores), np.asarray(full.sequences_scores), atol=1e-4)


@pytest.mark.parametrize("name", ["llama_gqa", "gpt_oss"])
def test_chunks_no_row_sees_are_not_read(name):
    """The engine's layout: rows written far into a long cache, every slot before them invalid. Those chunks are
    skipped (NaN planted in them changes nothing; the invalid slots of a chunk that is read hold finite garbage,
    weighted by exact zeros) and the steps equal the same rows written at slot 0."""
    model, _ = matrix_models(name)
    capacity, at = 3 * LIVE_CHUNK, LIVE_CHUNK + 40  # the rows start in the second chunk

    def poisoned(start: int):
        def poison(c):
            if c is None:
                return None
            c = c.at[:, :, :start].set(7.0)  # finite garbage in the invalid slots
            return c.at[:, :, :LIVE_CHUNK].set(jnp.nan) if start >= LIVE_CHUNK else c  # the chunk no row sees

        cache = model.init_cache(2, capacity)
        return cache.replace(index=jnp.int32(start), keys=tuple(map(poison, cache.keys)),
                             values=tuple(map(poison, cache.values)))

    for here, there in zip(_steps(model, poisoned(0)), _steps(model, poisoned(at))):
        assert np.isfinite(there).all()
        np.testing.assert_allclose(there, here, atol=2e-5, rtol=0)

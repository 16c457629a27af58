"""Compile guard: calls that differ only in traced values or in sizes within a shape bucket reuse the compiled
program. Counted twice: the jitted function's cache, and XLA backend compilations reported by ``jax.monitoring``.
(``length_penalty`` for beam search is checked in test_beam.py.)"""

from __future__ import annotations

import contextlib

import jax
import jax.monitoring
import numpy as np

import jaxgen
from conftest import count_all_compiles, models

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def model():
    return models("llama_gqa")[0]


@contextlib.contextmanager
def count_compiles():
    """Yields a list that collects the name of every XLA compilation of the decoding program."""
    names: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE and kwargs.get("fun_name") == "jit(_compiled)":
            names.append(kwargs["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def prompts(lengths, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for i, n in enumerate(lengths):
        ids[i, t - n:], mask[i, t - n:] = rng.integers(3, 128, n), 1
    return ids, mask


def test_new_prompt_lengths_and_sampling_values_do_not_recompile():
    # The first call has test_sampling.py's static settings (4 rows, prompt bucket 32, every filter on, processed
    # logprobs), so in a full run it reuses that program; alone, it compiles once.
    filters = dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2, min_new_tokens=2)
    common = dict(do_sample=True, pad_token_id=0, logprobs_mode="processed")
    ids, mask = prompts([18, 3, 5, 3], seed=0)
    before = jaxgen.compile_count()
    with count_compiles() as compiles:
        first = jaxgen.generate(model(), ids, mask, key=jax.random.key(0), max_new_tokens=12, **common, **filters)
    assert first.sequences.shape == (4, 18 + 12)
    compiled = jaxgen.compile_count()
    # guard for the guard: both counters agree on the first call (1 compilation, or 0 if an earlier test in this
    # process compiled the same program)
    assert len(compiles) == compiled - before and compiles in ([], ["jit(_compiled)"])
    calls = [
        # other prompt lengths in the same bucket (17..32), another max_new_tokens in the same bucket (<= 16)
        dict(lengths=[17, 1, 32, 9], max_new_tokens=12, **filters),
        dict(lengths=[2, 25, 11, 4], max_new_tokens=5, **filters),
        # other values of every traced setting, the same filters switched on
        dict(lengths=[18, 3, 5, 3], max_new_tokens=12, temperature=1.7, top_k=3, top_p=0.5, min_p=0.3,
             repetition_penalty=0.7, min_new_tokens=9),
        dict(lengths=[20, 20, 20, 20], max_new_tokens=16, temperature=0.3, top_k=128, top_p=0.99, min_p=0.0,
             repetition_penalty=2.0, min_new_tokens=1),
    ]
    with count_compiles() as compiles:
        for i, call in enumerate(calls):
            lengths = call.pop("lengths")
            ids, mask = prompts(lengths, seed=i + 1)
            out = jaxgen.generate(model(), ids, mask, key=jax.random.key(i), **common, **call)
            assert out.sequences.shape == (4, max(lengths) + call["max_new_tokens"])
            assert jaxgen.compile_count() == compiled, f"call {i} ({lengths}, {call}) recompiled"
    assert compiles == [], compiles


def test_switching_filters_on_and_off_and_new_sizes_in_the_bucket_compile_nothing():
    """After one warm-up call, other prompt lengths, batch sizes (3 -> 4 rows) and max_new_tokens in the same buckets,
    and the no-op values of temperature / top_p / min_p, compile nothing at all: not the decoding program and
    no host-side helper either."""
    common = dict(do_sample=True, pad_token_id=0, top_k=50)
    keys = jax.random.split(jax.random.key(3), 4)
    row_keys = {n: keys[:n] for n in (3, 4)}  # sliced before counting: a slice of a jax array compiles
    ids, mask = prompts([5, 9, 2, 7], seed=11)
    jaxgen.generate(model(), ids, mask, key=keys, max_new_tokens=8, temperature=1.0, top_p=1.0, min_p=None,
                    **common)
    calls = [
        dict(lengths=[3, 12, 4], temperature=0.8, top_p=0.9, min_p=0.05, max_new_tokens=7),
        dict(lengths=[16, 1, 4, 2], temperature=1.0, top_p=1.0, min_p=None, max_new_tokens=3),
        dict(lengths=[6, 6, 6], temperature=0.8, top_p=1.0, min_p=0.05, max_new_tokens=8),
    ]
    with count_all_compiles() as compiles:
        for i, call in enumerate(calls):
            lengths = call.pop("lengths")
            ids, mask = prompts(lengths, seed=20 + i)
            out = jaxgen.generate(model(), ids, mask, key=row_keys[len(lengths)], **common, **call)
            assert out.sequences.shape == (len(lengths), max(lengths) + call["max_new_tokens"])
    assert compiles == [], compiles


def test_no_op_filter_values_are_exact_no_ops():
    """temperature 1.0, top_p 1.0 and min_p 0.0 inside the program give the tokens and logprobs of plain sampling."""
    ids, mask = prompts([6, 3], seed=5)
    keys = jax.random.split(jax.random.key(9), 2)
    plain = jaxgen.generate(model(), ids, mask, key=keys, do_sample=True, top_k=0, pad_token_id=0,
                            max_new_tokens=10, logprobs_mode="processed")
    noop = jaxgen.generate(model(), ids, mask, key=keys, do_sample=True, top_k=0, pad_token_id=0,
                           max_new_tokens=10, logprobs_mode="processed", temperature=1.0, top_p=1.0, min_p=0.0)
    np.testing.assert_array_equal(np.asarray(plain.sequences), np.asarray(noop.sequences))
    np.testing.assert_array_equal(np.asarray(plain.token_logprobs), np.asarray(noop.token_logprobs))

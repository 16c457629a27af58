"""Property tests of ``GenerationConfig``: any value of any field is either accepted or refused with a
``ValueError`` naming the field, and accepted configs generate finite logprobs."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import jaxgen
from conftest import hf_checkpoint
from jaxgen.api.generation_config import GenerationConfig

VOCAB = 128
FIELDS = [f.name for f in dataclasses.fields(GenerationConfig)]

numpy_scalars = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True).map(np.float32),
    st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
    st.integers(-2**63, 2**63 - 1).map(np.int64),
    st.integers(-2**31, 2**31 - 1).map(np.int32),
    st.booleans().map(np.bool_),
)
# Anything a caller (or a generation_config.json) might pass: wrong types, NaN, infinities, huge and negative
# numbers, strings, containers, None, NumPy scalars; plus ordinary values so that many configs are valid.
anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 200),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0.0, 2.0),
    st.text(max_size=6), st.sampled_from(["raw", "processed", "never", "</s>", "23", "0.7"]),
    st.lists(st.one_of(st.integers(-2, 200), st.text(max_size=2), st.booleans()), max_size=3),
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    numpy_scalars,
)
FIELD_IN_MESSAGE = re.compile(r"^GenerationConfig\.(\w+)=")


def check(kwargs: dict) -> bool:
    """Construct + validate: True if accepted; else the ValueError names a field that was given."""
    cfg = GenerationConfig(**kwargs)  # construction never rejects: only normalises NumPy scalars
    try:
        cfg.validate(vocab_size=VOCAB)
    except ValueError as e:
        match = FIELD_IN_MESSAGE.match(str(e))
        assert match and match.group(1) in kwargs, (kwargs, str(e))
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(FIELDS), value=anything)
def test_one_field_any_value(field, value):
    check({field: value})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), anything))
def test_many_fields_any_values(kwargs):
    check(kwargs)


@functools.lru_cache(maxsize=None)
def tiny_model():
    return jaxgen.load_model(hf_checkpoint("llama_gqa")[0])


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0.05, 2.0), numpy_scalars)
# Sizes stay small (each distinct static setting compiles once, batch 1, at most 8 new tokens); values that
# are traced (temperature, penalties, min_new_tokens...) range freely.
cheap = st.fixed_dictionaries(dict(
    max_new_tokens=st.integers(1, 8), do_sample=st.booleans(), num_beams=st.integers(1, 3),
    num_return_sequences=st.integers(1, 3), top_logprobs=st.integers(0, 4),
    logprobs_mode=st.sampled_from(["raw", "processed"]),
), optional=dict(
    temperature=floats, top_p=floats, min_p=st.one_of(st.none(), floats), repetition_penalty=floats,
    length_penalty=floats, top_k=st.one_of(st.integers(-1, 2**31), numpy_scalars),
    min_new_tokens=st.integers(-1, 2**31),
    early_stopping=st.sampled_from([True, False, "never", 1, None]),
    eos_token_id=st.one_of(st.none(), st.integers(-1, VOCAB), st.lists(st.integers(0, VOCAB), max_size=3)),
    pad_token_id=st.one_of(st.none(), st.integers(-1, VOCAB)), max_length=st.one_of(st.integers(), floats),
    # the options of jaxgen.decode.extra_processors (ranges that cannot ban every token)
    no_repeat_ngram_size=st.integers(-1, 3), min_length=st.integers(-1, 12), typical_p=floats,
    epsilon_cutoff=floats, eta_cutoff=floats, presence_penalty=floats, frequency_penalty=floats,
    renormalize_logits=st.sampled_from([True, False, 1]),
    suppress_tokens=st.one_of(st.none(), st.lists(st.integers(-1, VOCAB), max_size=3)),
    bad_words_ids=st.one_of(st.none(), st.lists(st.lists(st.integers(0, VOCAB - 1), max_size=3), max_size=3)),
    exponential_decay_length_penalty=st.one_of(st.none(), st.tuples(st.integers(-1, 8), st.floats(0.0, 1.5))),
))


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(cheap)
def test_accepted_configs_generate_finite_logprobs(kwargs):
    assume(check(kwargs))
    out = jaxgen.generate(tiny_model(), np.array([[5, 9, 17, 33]], np.int32), config=GenerationConfig(**kwargs),
                          key=jax.random.key(0))
    assert np.isfinite(np.asarray(out.token_logprobs)).all(), kwargs
    new = np.asarray(out.new_tokens)
    assert ((new >= 0) & (new < VOCAB)).all(), kwargs

"""Bad input to ``jaxgen.api.generate``: a clear ``ValueError`` naming the field and what is allowed, raised before
anything is compiled (the compiled program's cache does not grow)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from conftest import BASE, models

VOCAB = BASE["vocab_size"]
CONTEXT = BASE["max_position_embeddings"]
IDS = np.array([[5, 9, 17, 33], [0, 0, 7, 8]], np.int32)
MASK = np.array([[1, 1, 1, 1], [0, 0, 1, 1]], np.int32)


def model():
    return models("llama_gqa")[0]


def raises(*patterns: str, ids=IDS, mask=MASK, **kw) -> None:
    """``generate`` raises ValueError whose message contains every pattern (regex); nothing was compiled."""
    before = jaxgen.compile_count()
    kw.setdefault("max_new_tokens", 4)
    with pytest.raises(ValueError) as err:
        jaxgen.generate(model(), ids, mask, **kw)
    message = str(err.value)
    for p in patterns:
        assert re.search(p, message), f"{p!r} not in {message!r}"
    assert jaxgen.compile_count() == before, "compiled before rejecting the input"


def test_num_return_sequences_above_num_beams():
    raises(r"num_return_sequences", r"num_beams=2", num_beams=2, num_return_sequences=3)
    raises(r"num_return_sequences", r"must be 1 for greedy", num_return_sequences=2)


def test_beam_sampling_is_refused():
    raises(r"do_sample=True with num_beams>1", do_sample=True, num_beams=2, key=jax.random.key(0))


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_top_p_outside_0_1(top_p):
    raises(r"top_p", re.escape("(0, 1]"), do_sample=True, top_p=top_p, key=jax.random.key(0))


@pytest.mark.parametrize("temperature", [-1.0, 0.0])
def test_temperature_not_positive(temperature):
    raises(r"temperature", r"> 0", do_sample=True, temperature=temperature, key=jax.random.key(0))


def test_top_logprobs_above_vocab():
    raises(r"top_logprobs", rf"vocab_size={VOCAB}", top_logprobs=VOCAB + 1)
    raises(r"top_logprobs", rf"vocab_size={VOCAB}", top_logprobs=-1)


def test_prompt_longer_than_context():
    ids = np.ones((1, CONTEXT + 1), np.int32)
    raises(r"max_position_embeddings=256", rf"{CONTEXT + 1} tokens", ids=ids, mask=None)


def test_empty_prompt():
    raises(r"input_ids", r"empty", ids=np.zeros((1, 0), np.int32), mask=None)
    raises(r"input_ids", r"empty", ids=np.zeros((0, 4), np.int32), mask=None)
    # a row made only of padding is an empty prompt too
    raises(r"attention_mask", r"\[1\]", mask=np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.int32), pad_token_id=0)


def test_missing_pad_token_id_with_padding():
    config = jaxgen.GenerationConfig(eos_token_id=None, pad_token_id=None, max_new_tokens=4)
    raises(r"pad_token_id", config=config)


@pytest.mark.parametrize("key", [
    lambda: jax.random.split(jax.random.key(0), 3),  # 3 keys for 2 rows
    lambda: jax.random.split(jax.random.key(0), 4).reshape(2, 2),
    lambda: jnp.zeros((3, 2), jnp.uint32),  # legacy key data, wrong count
    lambda: jnp.zeros((5,), jnp.float32),  # not a key at all
])
def test_keys_of_the_wrong_shape(key):
    raises(r"key", r"\(2,\)|\[2\]", do_sample=True, key=key())


def test_sampling_without_a_key():
    raises(r"do_sample=True", r"key=", do_sample=True, key=None)


def test_right_padding():
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
    raises(r"attention_mask", r"left padding", mask=mask)


@pytest.mark.parametrize("field,value,allowed", [
    ("top_k", -1, r">= 0"),
    ("min_p", 1.5, re.escape("[0, 1]")),
    ("repetition_penalty", 0.0, r"> 0"),
    ("num_beams", 0, r">= 1"),
    ("early_stopping", "sometimes", r"never"),
    ("logprobs_mode", "logits", r"raw.*processed"),
    ("eos_token_id", VOCAB, rf"vocab_size={VOCAB}"),
    ("max_new_tokens", 0, r">= 1"),
    ("min_new_tokens", -1, r">= 0"),
    ("num_return_sequences", 0, r">= 1"),
])
def test_other_fields_out_of_range(field, value, allowed):
    raises(field, allowed, **{field: value})


def test_unknown_option_and_bad_mask():
    raises(r"unknown generation option", r"temprature", temprature=0.5)
    raises(r"attention_mask", r"0 \(padding\) and 1", mask=MASK * 2)
    raises(r"attention_mask shape", mask=MASK[:, 1:])
    raises(r"vocab_size", ids=IDS + VOCAB)

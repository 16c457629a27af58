"""Streaming detokenization (``IncrementalText``) on the bundled byte-level BPE tokenizer, in Rust
(``tokenizers.decoders.DecodeStream``) and in Python: pieces concatenate to the full decode, incomplete UTF-8 is
held back, special tokens are skipped, and both paths hand out the same pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxgen
from jaxgen.loading import BUNDLED_MODEL
from jaxgen.text.detokenize import IncrementalText, stream_backend

TEXTS = ["héllo wörld, naïve café", "日本語のテキスト", "emoji 🎉👍🏽 done", "Ωmega — “quotes” ñ", "mixed: a🎉b日c",
         "def f(x):\n    return x  # ok\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return jaxgen.load_tokenizer(BUNDLED_MODEL)


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


def stream(tokenizer, ids, cuts=None, use_stream=True) -> list[str]:
    """Feed ``ids`` growing to each of ``cuts`` (default: one token at a time), then once more with ``final``.
    Returns every update's piece, empty ones included."""
    dec = IncrementalText(tokenizer, use_stream=use_stream)
    cuts = range(1, len(ids) + 1) if cuts is None else cuts
    return [dec.update(ids[:c]) for c in cuts] + [dec.update(ids, final=True)]


def test_bundled_tokenizer_streams_in_rust(tokenizer):
    assert stream_backend(tokenizer) is tokenizer.backend_tokenizer
    assert IncrementalText(tokenizer).stream is not None
    assert IncrementalText(tokenizer, use_stream=False).stream is None


@pytest.mark.parametrize("text", TEXTS)
def test_multibyte_text_streams_exactly(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert decode(tokenizer, ids) == text
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces == stream(tokenizer, ids, use_stream=False)


def test_tokens_that_only_decode_together_are_held_back(tokenizer):
    ids = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and all(decode(tokenizer, [t]) == "\ufffd" for t in ids)  # one byte each
    for use_stream in (True, False):
        dec = IncrementalText(tokenizer, use_stream=use_stream)
        assert [dec.update(ids[:c]) for c in range(1, 5)] == ["", "", "", "🎉"]
        # An incomplete character at the very end comes out only when the sequence is final.
        dec = IncrementalText(tokenizer, use_stream=use_stream)
        assert [dec.update(ids[:c]) for c in (1, 2)] == ["", ""]
        assert dec.update(ids[:2], final=True) == decode(tokenizer, ids[:2])


def test_special_tokens_are_skipped(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    a = tokenizer(" hello", add_special_tokens=False)["input_ids"]
    b = tokenizer("日本 ok", add_special_tokens=False)["input_ids"]
    ids = [eot] + a + [eot] + b[:2] + [eot] + b[2:] + [eot]
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == decode(tokenizer, ids) == " hello日本 ok"
    assert pieces == stream(tokenizer, ids, use_stream=False)


@st.composite
def ids_and_cuts(draw):
    vocab = st.integers(0, 4095)
    ids = draw(st.lists(vocab, max_size=40))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(ids))), max_size=len(ids)))) if ids else []
    return ids, cuts


@settings(max_examples=300, deadline=None)
@given(ids_and_cuts())
def test_random_token_sequences(tokenizer, case):
    """The rule: the pieces of every update, the final one included, concatenate to the full decode; no piece
    but the final one ends inside a character (U+FFFD last); a decode without U+FFFD streams without any."""
    ids, cuts = case
    full = decode(tokenizer, ids)
    pieces = stream(tokenizer, ids, cuts)
    assert "".join(pieces) == full
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])
    if "\ufffd" not in full:
        assert not any("\ufffd" in p for p in pieces)
    assert pieces == stream(tokenizer, ids, cuts, use_stream=False)


def test_stream_error_falls_back_to_python_from_the_same_state():
    """A decoder whose text of a longer window does not extend the shorter one's (here "ab" -> "XYZ") makes
    DecodeStream raise; the Python version takes over and hands out what it always did."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3}, unk_token="[UNK]"))
    core.decoder = decoders.Sequence([decoders.Fuse(), decoders.Replace("ab", "XYZ")])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False)
    assert stream_backend(tok) is not None
    ids = [3, 1, 2, 3, 3]
    dec = IncrementalText(tok)
    pieces = [dec.update(ids[:c]) for c in range(1, 6)] + [dec.update(ids, final=True)]
    assert dec.stream is None  # it raised, and was dropped
    assert pieces == stream(tok, ids, use_stream=False)


def test_tokenizers_that_cannot_stream_in_rust(tokenizer):
    class PythonOnly:  # no backend_tokenizer, like a slow tokenizer
        def decode(self, ids, skip_special_tokens=False):
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    assert stream_backend(PythonOnly()) is None
    ids = tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]
    assert "".join(stream(PythonOnly(), ids)) == TEXTS[2]

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    # transformers cleans up spaces in Python after the Rust decoder for non-BPE models: not streamable in Rust.
    assert stream_backend(PreTrainedTokenizerFast(tokenizer_object=words, clean_up_tokenization_spaces=True)) is None
    assert stream_backend(PreTrainedTokenizerFast(tokenizer_object=words, clean_up_tokenization_spaces=False))

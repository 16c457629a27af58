"""Stop strings on the host: the tokenizer's vocabulary -> :class:`jaxgen.decode.stop_strings.StopTable`.

The same preprocessing as transformers' ``StopStringCriteria`` (``generation/stopping_criteria.py``), written in
numpy without torch: every token's text as the tokenizer would produce it ("clean" vocabulary; bytes for
byte-level and byte-fallback tokenizers), then, per stop string, where each token can sit inside it (counting
from the end, runs off the start allowed) and by how much its start can overlap the string's end. The in-loop
check (:func:`jaxgen.decode.stop_strings.stop_hit`) is transformers' tensor algorithm on this table, so a row
stops at exactly the step transformers' criterion fires.

Tables are cached per tokenizer (and stop strings and vocabulary size): building one reads the whole vocabulary.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import numpy as np

from jaxgen.decode.stop_strings import StopTable

_NO_TARGET = np.iinfo(np.int32).max  # the length of a padding stop string: never reached
_cache: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (transformers' ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _has_type(config: Any, kind: str) -> bool:
    if isinstance(config, dict):
        return config.get("type") == kind or any(_has_type(v, kind) for v in config.values())
    if isinstance(config, list):
        return any(_has_type(v, kind) for v in config)
    return False


def matching_mode(tokenizer) -> str | None:
    """"byte_level", "byte_fallback" or None (plain strings): transformers' ``_get_stop_string_matching_mode``."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return None
    state = getattr(decoder, "__getstate__", lambda: None)()
    if isinstance(state, str):
        state = state.encode()
    config = None
    if isinstance(state, bytes):
        try:
            config = json.loads(state)
        except json.JSONDecodeError:
            config = None
    if decoder.__class__.__name__ == "ByteLevel":
        return "byte_level"
    if config is not None:
        if _has_type(config, "ByteFallback"):
            return "byte_fallback"
        if _has_type(config, "ByteLevel"):
            return "byte_level"
    return None


def clean_vocab(tokenizer, mode: str | None, static_prefix: str = "abcdef") -> tuple[list, list[int]]:
    """Each token's text as it decodes mid-sentence (transformers' ``clean_tokenizer_vocab``): a static prefix
    is decoded before it and cut off again, so prefix-space markers ("Ġ", "▁", "##") come out right."""
    byte_decoder = {c: b for b, c in _bytes_to_unicode().items()} if mode == "byte_level" else None
    base = tokenizer(static_prefix, add_special_tokens=False)["input_ids"]
    base_tokens = [tokenizer._convert_id_to_token(t) for t in base]
    texts, ids = [], []
    for token, idx in tokenizer.get_vocab().items():
        text = None
        if mode == "byte_level" and all(ch in byte_decoder for ch in token):
            text = bytes(byte_decoder[ch] for ch in token)
        elif (mode == "byte_fallback" and len(token) == 6 and token.startswith("<0x") and token.endswith(">")
              and all(ch in "0123456789abcdefABCDEF" for ch in token[3:5])):
            text = bytes([int(token[3:5], 16)])
        if text is None:
            text = tokenizer.convert_tokens_to_string(base_tokens + [token])
            text = text[text.index(static_prefix) + len(static_prefix):]
            if mode is not None:
                text = text.encode("utf-8")
        texts.append(text)
        ids.append(idx)
    return texts, ids


def _positions_and_ends(token, stop) -> tuple[list[int], list[int]]:
    """Where ``token`` fits inside ``stop`` counting from its end (runs off the start allowed), and by how many
    characters its start can overlap ``stop``'s end (transformers' ``_stop_string_get_matching_positions``)."""
    rev_stop, rev_token = stop[::-1], token[::-1]
    positions, ends = [], []
    i = rev_stop.find(rev_token[:1], 1)
    while 0 <= i < len(stop):
        if rev_token.startswith(rev_stop[i:i + len(token)]):
            positions.append(i)
        i = rev_stop.find(rev_token[:1], i + 1)
    if stop:
        i = token.find(stop[-1:])
        while i >= 0:
            overlap = min(i + 1, len(stop))
            if token[i + 1 - overlap:i + 1] == stop[-overlap:]:
                ends.append(overlap)
            i = token.find(stop[-1:], i + 1)
    else:
        ends = [0] * max(0, len(token) - 1)
    return positions, ends


def build_table(texts: list, ids: list[int], stops: tuple, vocab: int) -> tuple[StopTable, int]:
    """The table for token ``texts`` with ids ``ids`` (those >= ``vocab`` cannot be generated: left out), and
    the window bucket (a power of two >= the longest stop string, at least 8)."""
    per_stop = [[(idx, *_positions_and_ends(text, stop)) for text, idx in zip(texts, ids) if idx < vocab]
                for stop in stops]
    max_pos = max([len(p) for entries in per_stop for _, p, _ in entries] + [1])
    max_end = max([len(e) for entries in per_stop for _, _, e in entries] + [0])
    if max_end == 0:
        raise ValueError(f"GenerationConfig.stop_strings={stops!r}: no token of the tokenizer can end one of these "
                         "strings (characters the vocabulary does not have?).")
    s, p, e = _pow2(len(stops), 2), _pow2(max_pos, 2), _pow2(max_end, 2)  # small sets share one bucket
    positions = np.full((vocab + 1, s, p), -1, np.int32)  # row `vocab`: the dummy token
    ends = np.full((vocab + 1, s, e), -1, np.int32)
    lengths = np.full((vocab + 1,), -1, np.int32)
    for j, entries in enumerate(per_stop):
        for idx, pos, end in entries:
            positions[idx, j, :len(pos)] = pos
            ends[idx, j, :len(end)] = end
    for text, idx in zip(texts, ids):
        if idx < vocab:
            lengths[idx] = len(text)
    targets = np.full((s,), _NO_TARGET, np.int32)
    targets[:len(stops)] = [len(x) for x in stops]
    window = max(len(x) for x in stops)
    return (StopTable(positions=positions, ends=ends, lengths=lengths, targets=targets, window=np.int32(window)),
            _pow2(window, 8))


def stop_table(tokenizer, stop_strings: str | tuple[str, ...], vocab: int) -> tuple[StopTable, int]:
    """``(table, window bucket)`` for ``stop_strings`` with ``tokenizer``, for a model of ``vocab`` tokens."""
    strings = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    key = (strings, vocab)
    with _lock:
        try:
            hit = _cache.get(tokenizer, {}).get(key)
        except TypeError:  # not weak-referenceable: no cache
            hit = None
    if hit is not None:
        return hit
    mode = matching_mode(tokenizer)
    texts, ids = clean_vocab(tokenizer, mode)
    stops = strings if mode is None else tuple(x.encode("utf-8") for x in strings)
    result = build_table(texts, ids, stops, vocab)
    with _lock:
        try:
            entry = _cache.setdefault(tokenizer, {})
            if len(entry) >= 8:
                entry.pop(next(iter(entry)))
            entry[key] = result
        except TypeError:
            pass
    return result

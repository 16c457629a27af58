"""Incremental detokenization for streaming, and cached text of single tokens (for alternatives)."""

from __future__ import annotations

import importlib
from typing import Any, Sequence


class TokenText:
    """Decoded text of single tokens, cached (alternatives repeat a lot)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str | None:
        if self.tokenizer is None:
            return None
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]


# transformers' fast-tokenizer base classes (v5 name, then v4's): their ``_decode`` is the Rust decoder's text,
# plus an optional clean-up pass.
_FAST_BASES = (("transformers.tokenization_utils_tokenizers", "TokenizersBackend"),
               ("transformers.tokenization_utils_fast", "PreTrainedTokenizerFast"))


def stream_backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` whose ``decode(ids, skip_special_tokens=True)`` is exactly
    ``tokenizer.decode(ids, skip_special_tokens=True)``, or None when that cannot be vouched for.

    Only then does ``tokenizers.decoders.DecodeStream`` give the same text: a subclass that overrides ``_decode``
    or a tokenizer that cleans up spaces after the Rust decoder (transformers skips that for BPE models) would
    not, and slow (Python) tokenizers have no Rust decoder at all.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "decode"):
        return None
    try:
        from tokenizers.decoders import DecodeStream  # noqa: F401  (tokenizers < 0.21 has none)
    except ImportError:
        return None
    for module, name in _FAST_BASES:
        try:
            base = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(tokenizer, base):
            if type(tokenizer)._decode is not base._decode:
                return None
            cleans_up = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
            if cleans_up and name == "TokenizersBackend":  # v5 skips the clean-up for BPE unless forced
                cleans_up = (type(backend.model).__name__ != "BPE" or bool(getattr(
                    tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)))
            return None if cleans_up else backend
    return None


class IncrementalText:
    """Decode a growing token list and hand out only the new text, in time linear in its length.

    ``update(ids)`` takes the whole list so far (each call extends the previous one) and returns the text beyond
    what was handed out before. It decodes a window from ``prefix`` (tokens already turned into text once, kept as
    context so that tokenizers whose decoding of a token depends on its neighbours, like SentencePiece's leading
    space, agree) to the end, and hands out what lies beyond the window's old text. Text ending in U+FFFD (an
    incomplete UTF-8 sequence of byte-level tokens) is held back until its remaining bytes arrive; ``final=True``
    hands out whatever is left. So the pieces concatenate to ``tokenizer.decode(ids, skip_special_tokens=True)``
    wherever each decoded window extends the previous one, which a byte-level BPE tokenizer always does.

    Fast tokenizers run this in Rust (``tokenizers.decoders.DecodeStream``, the same algorithm, given each new
    chunk of ids at once); others, and a stream that finds a window whose text does not extend the previous one
    (its ``InvalidPrefix`` error), use the Python version from the same state. ``use_stream=False`` forces Python.
    """

    def __init__(self, tokenizer, use_stream: bool = True):
        self.tokenizer = tokenizer
        self.prefix = 0  # window start
        self.read = 0  # tokens whose text has been handed out
        self.backend = stream_backend(tokenizer) if use_stream else None
        self.stream = None
        if self.backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(skip_special_tokens=True)
        self.fed = 0  # tokens given to the stream

    def update(self, ids: Sequence[int], final: bool = False) -> str:
        if self.stream is not None and len(ids) == self.fed and not final:
            return ""  # nothing new, and the stream has handed out all it can
        if self.stream is not None and len(ids) > self.fed:
            try:
                piece = self.stream.step(self.backend, [int(t) for t in ids[self.fed:]])
            except Exception:  # InvalidPrefix (tokenizers raises a plain Exception): Python from here on
                self.stream = None
            else:
                self.fed = len(ids)
                if piece is not None:
                    # The stream moved its window exactly as the Python version does; keep the two in step.
                    self.prefix, self.read = self.read, len(ids)
                    return piece
                if not final:
                    return ""
                # Held back (trailing U+FFFD, or nothing new): the Python version hands out what is left.
        return self._update(ids, final)

    def _update(self, ids: Sequence[int], final: bool) -> str:
        window = [int(t) for t in ids[self.prefix:]]
        decode = lambda part: self.tokenizer.decode(part, skip_special_tokens=True)
        old = decode(window[:self.read - self.prefix])
        new = decode(window)
        if len(new) <= len(old) or (new.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(ids)
        return new[len(old):]

"""Incremental detokenization for streaming, and cached text of single tokens (for alternatives)."""

from __future__ import annotations

from typing import Sequence


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


class IncrementalText:
    """Decode a growing token list and hand out only the new text, in time linear in its length.

    Decodes a window from ``prefix`` (tokens already turned into text once, kept as context so that tokenizers
    whose decoding of a token depends on its neighbours, like SentencePiece's leading space, agree) to the end,
    and hands out what lies beyond the window's old text. A trailing U+FFFD (an incomplete UTF-8 sequence of
    byte-level tokens) is held back until its remaining bytes arrive, so the pieces concatenate to the decoded
    text of the whole list.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = 0  # window start
        self.read = 0  # tokens whose text has been handed out

    def update(self, ids: Sequence[int], final: bool = False) -> str:
        window = [int(t) for t in ids[self.prefix:]]
        decode = lambda part: self.tokenizer.decode(part, skip_special_tokens=True)
        old = decode(window[:self.read - self.prefix])
        new = decode(window)
        if len(new) <= len(old) or (new.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(ids)
        return new[len(old):]


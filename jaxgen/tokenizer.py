"""Text in and out: the checkpoint's tokenizer (transformers' ``AutoTokenizer``, local files only), the chat
template, and :func:`generate_text`, which returns text plus the token-level details of :func:`jaxgen.generate`.

transformers is imported inside the functions, so ``import jaxgen`` stays free of it (loading a tokenizer through
``AutoTokenizer`` does import torch, because transformers' config module does).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from jaxgen.errors import JaxgenError
from jaxgen.generate import generate, resolve_config
from jaxgen.generation_config import GenerationConfig
from jaxgen.model import Model

__all__ = ["GeneratedToken", "TextGeneration", "TokenAlternative", "TokenizerError", "encode_prompts",
           "generate_text", "has_tokenizer", "load_tokenizer"]

# Files any transformers tokenizer is loaded from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "tokenizer.tiktoken")

TextStreamer = Callable[[int, str], None]


class TokenizerError(JaxgenError, ValueError):
    """No usable tokenizer (or chat template) for text in/out."""


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds tokenizer files."""
    return any(os.path.isfile(os.path.join(os.fspath(path), f)) for f in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint folder's tokenizer via ``transformers.AutoTokenizer`` (local files only, never the Hub).

    Raises :class:`TokenizerError` with what to do when the folder has none: id-level generation
    (``jaxgen.generate`` with ``input_ids``) does not need one.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: not a folder, so it has no tokenizer.")
    if not has_tokenizer(path):
        raise TokenizerError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}), so text cannot be encoded or "
            "decoded. Copy the tokenizer files of the original checkpoint into this folder, or work with token ids "
            "(`jaxgen.generate(model, input_ids)`, or `--ids` on the command line).")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"{path}: transformers cannot load its tokenizer: {first}") from e


@dataclasses.dataclass(frozen=True)
class TokenAlternative:
    id: int
    text: str | None
    logprob: float


@dataclasses.dataclass(frozen=True)
class GeneratedToken:
    """One generated token: id, its own decoded text, logprob, and the top-k alternatives at its step."""

    id: int
    text: str | None
    logprob: float
    alternatives: tuple[TokenAlternative, ...] = ()


@dataclasses.dataclass(frozen=True)
class TextGeneration:
    """One returned sequence of :func:`generate_text`.

    ``text``: the decoded continuation (special tokens skipped, EOS excluded; None without a tokenizer).
    ``finish_reason``: "eos" (stopped at an EOS id) or "length" (reached ``max_new_tokens``).
    ``token_ids`` / ``tokens``: every generated token, EOS included. ``prompt_index`` says which prompt it
    continues (``num_return_sequences`` > 1 returns several per prompt, adjacent); ``sequence_score`` is beam
    search's length-normalised score (None otherwise).
    """

    prompt: str | list[int]
    prompt_index: int
    prompt_ids: list[int]
    text: str | None
    finish_reason: str
    token_ids: list[int]
    tokens: tuple[GeneratedToken, ...]
    sequence_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(prompt=self.prompt, text=self.text, finish_reason=self.finish_reason,
                    tokens=[dict(id=t.id, text=t.text, logprob=t.logprob,
                                 alternatives=[dict(id=a.id, text=a.text, logprob=a.logprob)
                                               for a in t.alternatives]) for t in self.tokens])


def _is_ids(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple, np.ndarray)) and all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in prompt)


def encode_prompts(tokenizer, prompts: Sequence[str | Sequence[int]], *, chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt: text through the tokenizer (with its special tokens, e.g. BOS), or through the
    chat template as one user message when ``chat``; token-id prompts pass through unchanged."""
    out = []
    for p in prompts:
        if _is_ids(p):
            if chat:
                raise ValueError("chat=True needs text prompts, not token ids.")
            out.append([int(x) for x in p])
            continue
        if not isinstance(p, str):
            raise ValueError(f"a prompt must be a string or a list of token ids; got {type(p).__name__}.")
        if tokenizer is None:
            raise TokenizerError("text prompts need a tokenizer; pass one (jaxgen.tokenizer.load_tokenizer(folder)) "
                                 "or give token ids.")
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise TokenizerError("the tokenizer has no chat template (chat_template is not set in "
                                     "tokenizer_config.json / chat_template.jinja); generate without chat.")
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(p)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {p!r} encodes to no tokens; give a non-empty prompt.")
        out.append(list(ids))
    return out


class _TokenText:
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


class _IncrementalText:
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


def _text_ids(row: np.ndarray, steps: int, eos: set[int]) -> np.ndarray:
    """The tokens of a row that make its text: up to ``steps``, stopping before the first EOS."""
    row = row[:steps]
    stops = np.flatnonzero(np.isin(row, list(eos))) if eos else ()
    return row[:stops[0]] if len(stops) else row


def generate_text(model: Model, tokenizer, prompts: str | Sequence[str | Sequence[int]], *, chat: bool = False,
                  config: GenerationConfig | None = None, key: Any = None, streamer: TextStreamer | None = None,
                  stream_every: int = 8, **overrides: Any) -> list[TextGeneration]:
    """Generate from text prompts; returns one :class:`TextGeneration` per returned sequence (prompt order,
    ``num_return_sequences`` adjacent per prompt).

    ``prompts``: a string, or a list of strings and/or token-id lists (token ids work without a tokenizer; texts
    are then None). ``chat``: wrap each prompt in the tokenizer's chat template as a user message. ``config``,
    ``key`` and ``overrides`` as in :func:`jaxgen.generate` (``top_logprobs=k`` fills the alternatives).
    ``streamer(sequence_index, new_text)`` receives text as it is produced, every ``stream_every`` steps from
    inside the compiled loop (beam search: once at the end); the pieces of one sequence concatenate to its
    ``text``.
    """
    if isinstance(prompts, str) or (_is_ids(prompts) and len(prompts)):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given.")
    encoded = encode_prompts(tokenizer, prompts, chat=chat)
    cfg = resolve_config(model, config, overrides)
    eos = set(cfg.eos_token_ids)
    if cfg.pad_token_id is None:
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        pad = pad if pad is not None else (cfg.eos_token_ids[0] if cfg.eos_token_ids else 0)
        cfg = cfg.replace(pad_token_id=int(pad))
    b, t = len(encoded), max(len(e) for e in encoded)
    ids = np.full((b, t), cfg.pad_token_id, np.int32)
    mask = np.zeros((b, t), np.int32)
    for i, e in enumerate(encoded):
        ids[i, t - len(e):], mask[i, t - len(e):] = e, 1
    r = cfg.num_return_sequences
    rows = b * r

    low_streamer = None
    decoders: list[_IncrementalText] = []
    if streamer is not None and tokenizer is not None:
        decoders = [_IncrementalText(tokenizer) for _ in range(rows)]

        def low_streamer(tokens: np.ndarray, steps: int, done: np.ndarray) -> None:
            for i in range(min(rows, tokens.shape[0])):
                piece = decoders[i].update(_text_ids(tokens[i], steps, eos))
                if piece:
                    streamer(i, piece)

    out = generate(model, ids, mask, config=cfg, key=key, streamer=low_streamer, stream_every=stream_every)
    new = np.asarray(out.new_tokens)
    num = np.asarray(out.num_generated)
    lps = np.asarray(out.token_logprobs)
    top_ids, top_lps = np.asarray(out.top_token_ids), np.asarray(out.top_logprobs)
    scores = None if out.sequences_scores is None else np.asarray(out.sequences_scores)
    token_text = _TokenText(tokenizer)
    results = []
    for i in range(rows):
        p = i // r
        n = int(num[i])
        gen = [int(x) for x in new[i, :n]]
        finish = "eos" if gen and gen[-1] in eos else "length"
        text = None
        if tokenizer is not None:
            text_ids = gen[:-1] if finish == "eos" else gen
            text = tokenizer.decode(text_ids, skip_special_tokens=True)
            if decoders:
                rest = decoders[i].update(text_ids, final=True)
                if rest:
                    streamer(i, rest)
        tokens = tuple(
            GeneratedToken(id=tok, text=token_text(tok), logprob=float(lps[i, s]),
                           alternatives=tuple(TokenAlternative(id=int(a), text=token_text(int(a)),
                                                               logprob=float(top_lps[i, s, j]))
                                              for j, a in enumerate(top_ids[i, s]) if a >= 0))
            for s, tok in enumerate(gen))
        results.append(TextGeneration(
            prompt=prompts[p] if isinstance(prompts[p], str) else [int(x) for x in prompts[p]], prompt_index=p,
            prompt_ids=encoded[p], text=text, finish_reason=finish, token_ids=gen, tokens=tokens,
            sequence_score=None if scores is None or math.isnan(float(scores[i])) else float(scores[i])))
    return results

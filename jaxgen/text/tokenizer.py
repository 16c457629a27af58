"""The checkpoint's tokenizer (transformers' ``AutoTokenizer``, local files only) and prompt encoding, chat template
included.

transformers is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from jaxgen.errors import JaxgenError
from jaxgen.text._hf import import_transformers

__all__ = ["TokenizerError", "encode_prompts", "has_tokenizer", "is_ids", "load_tokenizer"]


# Files that hold a vocabulary (any one is enough for transformers); tokenizer_config.json alone holds none.
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer.tiktoken",
               "sentencepiece.bpe.model", "vocab.txt")
TOKENIZER_FILES = ("tokenizer_config.json",) + VOCAB_FILES


class TokenizerError(JaxgenError, ValueError):
    """No usable tokenizer (or chat template) for text in/out."""


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a tokenizer's vocabulary (tokenizer_config.json alone does not count)."""
    return any(os.path.isfile(os.path.join(os.fspath(path), f)) for f in VOCAB_FILES)


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint folder's tokenizer via ``transformers.AutoTokenizer`` (local files only, never the Hub).

    Raises :class:`TokenizerError` with what to do when the folder has none: id-level generation
    (``jaxgen.api.generate`` with ``input_ids``) does not need one.
    """
    from jaxgen.errors import CheckpointError
    from jaxgen.loading import resolve_model_path

    try:
        path = resolve_model_path(os.fspath(path))  # a folder, or a Hub id in the local cache
    except CheckpointError as e:
        raise TokenizerError(str(e)) from e
    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: not a folder, so it has no tokenizer.")
    todo = ("Copy the tokenizer files of the original checkpoint into this folder, or work with token ids "
            "(`jaxgen.generate(model, input_ids)`, or `--ids` on the command line).")
    if not has_tokenizer(path):
        # transformers 5 would build an empty tokenizer from tokenizer_config.json alone (every text -> no
        # tokens): refuse instead.
        found = " (only tokenizer_config.json, which holds no vocabulary)" if os.path.isfile(
            os.path.join(path, "tokenizer_config.json")) else ""
        raise TokenizerError(f"{path} has no tokenizer{found}: looked for {', '.join(VOCAB_FILES)}; none is there, "
                             f"so text cannot be encoded or decoded. {todo}")
    transformers = import_transformers()
    cls = _named_class(transformers, path) or transformers.AutoTokenizer
    try:
        return cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"{path}: transformers cannot load its tokenizer ({type(e).__name__}: {first}).") from e


def _named_class(transformers, path: str):
    """The class ``tokenizer_config.json`` names, taken straight from transformers: ``AutoTokenizer`` would
    import the model configs, and with them torch (seconds of start-up), only to find that same class."""
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            name = json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name.isidentifier():
        return None
    for candidate in (name, name.removesuffix("Fast")):
        try:
            cls = getattr(transformers, candidate, None)
        except Exception:  # transformers' lazy module raises on classes it cannot import here
            cls = None
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    return None


def is_ids(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple, np.ndarray)) and all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in prompt)


def encode_prompts(tokenizer, prompts: Sequence[str | Sequence[int]], *, chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt: text through the tokenizer (with its special tokens, e.g. BOS), or through the
    chat template as one user message when ``chat``; token-id prompts pass through unchanged."""
    out = []
    for p in prompts:
        if is_ids(p):
            if chat:
                raise ValueError("chat=True needs text prompts, not token ids.")
            out.append([int(x) for x in p])
            continue
        if not isinstance(p, str):
            raise ValueError(f"a prompt must be a string or a list of token ids; got {type(p).__name__}.")
        if tokenizer is None:
            raise TokenizerError("text prompts need a tokenizer; pass one (jaxgen.text.tokenizer.load_tokenizer(folder)) "
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

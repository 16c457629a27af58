"""The checkpoint's tokenizer (transformers' ``AutoTokenizer``, local files only) and prompt encoding, chat template
included.

transformers is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxgen.errors import JaxgenError

__all__ = ["TokenizerError", "encode_prompts", "has_tokenizer", "is_ids", "load_tokenizer"]


# Files any transformers tokenizer is loaded from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "tokenizer.tiktoken")



class TokenizerError(JaxgenError, ValueError):
    """No usable tokenizer (or chat template) for text in/out."""


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds tokenizer files."""
    return any(os.path.isfile(os.path.join(os.fspath(path), f)) for f in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint folder's tokenizer via ``transformers.AutoTokenizer`` (local files only, never the Hub).

    Raises :class:`TokenizerError` with what to do when the folder has none: id-level generation
    (``jaxgen.api.generate`` with ``input_ids``) does not need one.
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

"""``generate_text``: text prompts in, text plus the token-level details of :func:`jaxgen.generate` out."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from jaxgen.api.generate import generate, resolve_config
from jaxgen.api.generation_config import GenerationConfig
from jaxgen.api.inputs import left_pad
from jaxgen.model import Model
from jaxgen.text.detokenize import IncrementalText, TokenText
from jaxgen.text.tokenizer import encode_prompts, is_ids

__all__ = ["GeneratedToken", "TextGeneration", "TokenAlternative", "generate_text"]

TextStreamer = Callable[[int, str], None]


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
    ``finish_reason``: "eos" (stopped at an EOS id), "stop_string" (its text ends with one of ``stop_strings``,
    kept in ``text`` as transformers keeps it) or "length" (reached ``max_new_tokens``).
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



def _text_ids(row: np.ndarray, steps: int, eos: set[int]) -> np.ndarray:
    """The tokens of a row that make its text: up to ``steps``, stopping before the first EOS."""
    row = row[:steps]
    stops = np.flatnonzero(np.isin(row, list(eos))) if eos else ()
    return row[:stops[0]] if len(stops) else row


def generate_text(model: Model, tokenizer, prompts: str | Sequence[str | Sequence[int]], *, chat: bool = False,
                  config: GenerationConfig | None = None, key: Any = None, streamer: TextStreamer | None = None,
                  stream_every: int = 8, images: Sequence[Any] | None = None, processor: Any = None,
                  **overrides: Any) -> list[TextGeneration]:
    """Generate from text prompts; returns one :class:`TextGeneration` per returned sequence (prompt order,
    ``num_return_sequences`` adjacent per prompt).

    ``prompts``: a string, or a list of strings and/or token-id lists (token ids work without a tokenizer; texts
    are then None). ``chat``: wrap each prompt in the tokenizer's chat template as a user message. ``config``,
    ``key`` and ``overrides`` as in :func:`jaxgen.api.generate` (``top_logprobs=k`` fills the alternatives).
    ``streamer(sequence_index, new_text)`` receives text as it is produced, every ``stream_every`` steps from
    inside the compiled loop (beam search: once at the end); the pieces of one sequence concatenate to its
    ``text``. ``images`` (PIL images; Gemma 3, MiniCPM-V 4.6 checkpoints): every prompt becomes one chat turn
    holding those images then its text, prepared by ``processor`` (the checkpoint's ``AutoProcessor``;
    :func:`jaxgen.text.images.load_processor`).
    """
    if isinstance(prompts, str) or (is_ids(prompts) and len(prompts)):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given.")
    image_args = {}
    if images:
        if processor is None:
            raise ValueError("images need the checkpoint's processor: pass processor=load_processor(folder).")
        from jaxgen.text.images import encode_with_images

        inputs = encode_with_images(processor, prompts, images)
        encoded = [row[m == 1].tolist() for row, m in zip(inputs["input_ids"], inputs["attention_mask"])]
        image_args = {k: inputs[k] for k in ("pixel_values", "token_type_ids", "target_sizes") if k in inputs}
    else:
        encoded = encode_prompts(tokenizer, prompts, chat=chat)
    cfg = resolve_config(model, config, overrides)
    eos = set(cfg.eos_token_ids)
    if cfg.pad_token_id is None:
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        pad = pad if pad is not None else (cfg.eos_token_ids[0] if cfg.eos_token_ids else 0)
        cfg = cfg.replace(pad_token_id=int(pad))
    b = len(encoded)
    ids, mask = left_pad(encoded, cfg.pad_token_id)
    if "token_type_ids" in image_args:  # the processor's rows, re-padded as ids are
        image_args["token_type_ids"] = left_pad([row[m == 1].tolist() for row, m in zip(
            image_args["token_type_ids"], inputs["attention_mask"])], 0)[0]
    r = cfg.num_return_sequences
    rows = b * r

    decoders = [IncrementalText(tokenizer) for _ in range(rows)] if streamer is not None and tokenizer is not None else []

    def stream_text(tokens: np.ndarray, steps: int, done: np.ndarray) -> None:
        for i in range(min(rows, tokens.shape[0])):
            piece = decoders[i].update(_text_ids(tokens[i], steps, eos))
            if piece:
                streamer(i, piece)

    low_streamer = stream_text if decoders else None

    out = generate(model, ids, mask, config=cfg, key=key, streamer=low_streamer, stream_every=stream_every,
                   tokenizer=tokenizer, **image_args)
    new = np.asarray(out.new_tokens)
    num = np.asarray(out.num_generated)
    lps = np.asarray(out.token_logprobs)
    top_ids, top_lps = np.asarray(out.top_token_ids), np.asarray(out.top_logprobs)
    scores = None if out.sequences_scores is None else np.asarray(out.sequences_scores)
    token_text = TokenText(tokenizer)
    results = []
    for i in range(rows):
        p = i // r
        n = int(num[i])
        gen = [int(x) for x in new[i, :n]]
        finish = "eos" if gen and gen[-1] in eos else "length"
        if finish == "length" and cfg.stop_strings is not None and n < out.new_tokens.shape[1]:
            finish = "stop_string"  # only EOS, a stop string or the length limit end a row
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

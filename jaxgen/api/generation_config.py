"""``GenerationConfig``: transformers' field names, meanings and defaults, plus jaxgen's logprob options."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

# transformers' defaults (GenerationConfig._get_default_generation_params) for the fields jaxgen shares.
_HF_DEFAULTS = dict(max_length=20, do_sample=False, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0,
                    num_beams=1, length_penalty=1.0, early_stopping=False, num_return_sequences=1)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Fields shared with ``transformers.GenerationConfig`` keep its meaning and default.

    ``top_logprobs``: how many most-likely alternatives to record per generated token (0 = none).
    ``logprobs_mode``: "raw" (log-softmax of the model's logits) or "processed" (log-softmax of the scores the
    choice was made from, after repetition penalty, temperature, top-k/p, min-p...).
    """

    max_new_tokens: int | None = None
    max_length: int = 20  # prompt + new tokens; used only when max_new_tokens is None (transformers' rule)
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    top_logprobs: int = 0
    logprobs_mode: str = "raw"

    def replace(self, **overrides: Any) -> "GenerationConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; valid options: "
                             f"{sorted(f.name for f in dataclasses.fields(self))}.")
        return dataclasses.replace(self, **overrides)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(int(t) for t in self.eos_token_id)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GenerationConfig":
        """From a ``generation_config.json``-style dict; keys jaxgen does not know are ignored, None means default."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names and v is not None}
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = tuple(values["eos_token_id"])
        return cls(**values)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "GenerationConfig":
        file = os.path.join(os.fspath(path), "generation_config.json")
        with open(file) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        return d

    def validate(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming the field and its allowed range."""
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"GenerationConfig.{field}={getattr(self, field)!r} is invalid: {allowed}.")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        if self.max_new_tokens is not None and (not is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise bad("max_new_tokens", "must be an integer >= 1")
        if not is_int(self.max_length) or self.max_length < 1:
            raise bad("max_length", "must be an integer >= 1")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            raise bad("min_new_tokens", "must be an integer >= 0")
        if not isinstance(self.do_sample, bool):
            raise bad("do_sample", "must be True or False")
        # Greedy and beam search ignore temperature, and `temperature=0` is a common way to ask for greedy.
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or (self.do_sample and not self.temperature > 0):
            raise bad("temperature", "must be a number > 0 (for greedy decoding use do_sample=False)")
        if not is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "must be an integer >= 0 (0 disables top-k)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1] (1.0 disables top-p)")
        if self.min_p is not None and (not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p <= 1):
            raise bad("min_p", "must be in [0, 1] or None")
        if not isinstance(self.repetition_penalty, (int, float)) or not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "must be a number > 0 (1.0 disables it)")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise bad("num_beams", "must be an integer >= 1")
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool):
            raise bad("length_penalty", "must be a number")
        if self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", 'must be True, False or "never"')
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise bad("num_return_sequences", "must be an integer >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"must be <= num_beams={self.num_beams} with beam search")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise bad("num_return_sequences", "must be 1 for greedy decoding (use do_sample=True or num_beams>1)")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("do_sample=True with num_beams>1 (beam sampling) is not supported; use one of "
                             "greedy (do_sample=False, num_beams=1), sampling (num_beams=1) or beam search "
                             "(do_sample=False).")
        if not is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= vocab_size:
            raise bad("top_logprobs", f"must be an integer in [0, vocab_size={vocab_size}]")
        if self.logprobs_mode not in ("raw", "processed"):
            raise bad("logprobs_mode", 'must be "raw" or "processed"')
        for t in self.eos_token_ids:
            if not 0 <= t < vocab_size:
                raise bad("eos_token_id", f"ids must be in [0, vocab_size={vocab_size})")
        if self.pad_token_id is not None and (not is_int(self.pad_token_id) or self.pad_token_id < 0):
            raise bad("pad_token_id", "must be an integer >= 0")

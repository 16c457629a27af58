"""``GenerationConfig``: transformers' field names, meanings and defaults, plus jaxgen's logprob options."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

# transformers' defaults (GenerationConfig._get_default_generation_params) for the fields jaxgen shares.
_HF_DEFAULTS = dict(max_length=20, do_sample=False, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0,
                    num_beams=1, length_penalty=1.0, early_stopping=False, num_return_sequences=1)

# Sizes and counts become int32 inside the compiled program; float options become float32.
INT32_LIMIT = 2**31
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: below it top_p may flush to 0 on some devices
# Scores are divided by temperature and repetition_penalty in float32: below this floor a logit of 1e8 would
# overflow to inf and the processed logprobs to NaN (transformers, in float32, does the same).
MIN_DIVISOR = 1e-30


def _plain(value: Any) -> Any:
    """NumPy/JAX scalars (``np.float32(0.7)``, ``np.int64(5)``, ``np.bool_(True)``, 0-d arrays) as Python values;
    anything else unchanged (``validate`` judges it). Duck-typed, so this module does not import NumPy."""
    if type(value) in (bool, int, float, str) or value is None:
        return value
    if getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None and hasattr(value, "item"):
        try:
            out = value.item()
        except Exception:  # not a real array scalar: leave it to validate
            return value
        return out if type(out) in (bool, int, float, str) else value
    return value


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Fields shared with ``transformers.GenerationConfig`` keep its meaning and default.

    ``top_logprobs``: how many most-likely alternatives to record per generated token (0 = none).
    ``logprobs_mode``: "raw" (log-softmax of the model's logits) or "processed" (log-softmax of the scores the
    choice was made from, after repetition penalty, temperature, top-k/p, min-p...).
    NumPy scalars are accepted wherever Python numbers are (stored as Python values); :meth:`validate` checks
    every field.
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        eos = self.eos_token_id
        if not isinstance(eos, (list, tuple)) and getattr(eos, "ndim", None) == 1 and hasattr(eos, "tolist"):
            eos = eos.tolist()  # a 1-d array of ids
        if isinstance(eos, (list, tuple)):  # a tuple, so the config stays hashable
            object.__setattr__(self, "eos_token_id", tuple(_plain(t) for t in eos))

    def replace(self, **overrides: Any) -> "GenerationConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; valid options: "
                             f"{sorted(f.name for f in dataclasses.fields(self))}.")
        return dataclasses.replace(self, **overrides)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The EOS ids as a tuple (never the characters of a string: ``validate`` rejects strings)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, tuple):
            return self.eos_token_id
        return (self.eos_token_id,)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GenerationConfig":
        """From a ``generation_config.json``-style dict; keys jaxgen does not know are ignored, None means default."""
        if not isinstance(d, Mapping):
            raise ValueError(f"GenerationConfig.from_dict expects a mapping of option names to values (a JSON "
                             f"object such as {{\"max_new_tokens\": 32}}), got {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "GenerationConfig":
        file = os.path.join(os.fspath(path), "generation_config.json")
        with open(file) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: not valid JSON ({e}); fix or delete it.") from e
        try:
            return cls.from_dict(raw)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        return d

    def validate(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming the field and its allowed range (message ``GenerationConfig.<field>=...``)."""
        def bad(field: str, allowed: str) -> ValueError:
            shown = repr(getattr(self, field))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return ValueError(f"GenerationConfig.{field}={shown} is invalid: {allowed}.")

        def check_int(field: str, low: int, high: int = INT32_LIMIT, optional: bool = False,
                      allowed: str = "") -> None:
            x = getattr(self, field)
            if optional and x is None:
                return
            if not _is_int(x) or not low <= x < high:
                raise bad(field, allowed or f"must be an integer >= {low} and < 2**31" + (" or None" * optional))

        def check_float(field: str, ok: Any, allowed: str, optional: bool = False) -> None:
            # Every float option is a float32 in the compiled program: NaN and values float32 cannot hold are out.
            x = getattr(self, field)
            if optional and x is None:
                return
            if not _is_number(x) or not _fits_float32(x) or not ok(float(x)):
                raise bad(field, allowed)

        check_int("max_new_tokens", 1, optional=True)
        check_int("max_length", 1)
        check_int("min_new_tokens", 0)
        if not isinstance(self.do_sample, bool):
            raise bad("do_sample", "must be True or False")
        # Greedy and beam search ignore temperature (`temperature=0` is a common way to ask for greedy); sampling
        # needs > 0, and inf is transformers' uniform sampling.
        check_float("temperature", lambda t: not self.do_sample or t >= MIN_DIVISOR,
                    f"must be a number > 0 when sampling (at least {MIN_DIVISOR:g}: smaller ones overflow float32 "
                    "scores; inf samples uniformly; for greedy decoding use do_sample=False)")
        check_int("top_k", 0, allowed="must be an integer >= 0 and < 2**31 (0 disables top-k)")
        check_float("top_p", lambda p: FLOAT32_TINY <= p <= 1 and math.isfinite(p), "must be in (0, 1] (1.0 "
                    "disables top-p)")
        check_float("min_p", lambda p: 0 <= p <= 1, "must be in [0, 1] or None", optional=True)
        check_float("repetition_penalty", lambda r: MIN_DIVISOR <= r < math.inf,
                    f"must be a finite number > 0 (at least {MIN_DIVISOR:g}; 1.0 disables it)")
        check_int("num_beams", 1)
        check_float("length_penalty", math.isfinite, "must be a finite number (beam score = sum of logprobs / "
                    "length ** length_penalty)")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise bad("early_stopping", 'must be True, False or "never"')
        check_int("num_return_sequences", 1)
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"must be <= num_beams={self.num_beams} with beam search")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise bad("num_return_sequences", "must be 1 for greedy decoding (use do_sample=True or num_beams>1)")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("GenerationConfig.do_sample=True with num_beams>1 (beam sampling) is not supported; use "
                             "one of greedy (do_sample=False, num_beams=1), sampling (num_beams=1) or beam search "
                             "(do_sample=False).")
        check_int("top_logprobs", 0, vocab_size + 1, allowed=f"must be an integer in [0, vocab_size={vocab_size}]")
        if not (isinstance(self.logprobs_mode, str) and self.logprobs_mode in ("raw", "processed")):
            raise bad("logprobs_mode", 'must be "raw" or "processed"')
        eos = self.eos_token_id
        if not (eos is None or _is_int(eos) or (isinstance(eos, tuple) and all(_is_int(t) for t in eos))):
            raise bad("eos_token_id", "must be a token id (int), a list of ids, or None; for a token's text such "
                                      "as \"</s>\" give its id (tokenizer.convert_tokens_to_ids)")
        if not all(0 <= t < vocab_size for t in self.eos_token_ids):
            raise bad("eos_token_id", f"ids must be in [0, vocab_size={vocab_size})")
        for field in ("pad_token_id", "bos_token_id"):
            x = getattr(self, field)
            if x is None:
                continue
            if not _is_int(x) or x < 0:
                raise bad(field, "must be a token id (an integer >= 0) or None")
            if x >= vocab_size:
                raise bad(field, f"the model has no such token: ids must be in [0, vocab_size={vocab_size}). A "
                          "token added to the tokenizer without resizing the model's embeddings gets such an id; "
                          "use an existing id (e.g. the EOS id) or resize the embeddings "
                          "(model.resize_token_embeddings in transformers) and reconvert")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fits_float32(x: int | float) -> bool:
    """Not NaN and, unless infinite, within float32's range (a huge int or 1e300 would become inf or overflow)."""
    try:
        f = float(x)
    except OverflowError:
        return False
    return not math.isnan(f) and (math.isinf(f) or abs(f) <= FLOAT32_MAX)

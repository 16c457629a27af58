"""``GenerationConfig``: transformers' field names, meanings and defaults, plus jaxgen's logprob options."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
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


class IgnoredOptionWarning(UserWarning):
    """A transformers generation option that cannot change jaxgen's output was given and is ignored."""


# transformers' GenerationConfig keys that jaxgen does not implement, by what jaxgen does with them. Each maps to
# the values that change nothing (transformers' default and its equivalents): at those values the key is accepted
# without a word; at any other value it is a warning (ignored) or an error (unsupported).
_METADATA = frozenset({"transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"})
# How transformers runs, never what it returns; model authors set them for speed (Gemma 2's "hybrid" cache):
# accepted whatever their value, like the metadata.
_RUNTIME = frozenset({"cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
                      "prefill_chunk_size", "continuous_batching_config", "low_memory"})
_OFF_FALSE, _OFF_NONE = (None, False), (None,)
# Ignored (with a warning): they do not change the tokens of decoder-only generation, or jaxgen cannot honour
# them and the tokens stay what they would be without them.
_IGNORED: dict[str, tuple[tuple, str]] = {
    "use_cache": ((None, True), "jaxgen always decodes with its KV cache (same tokens)"),
    "output_scores": (_OFF_FALSE, "jaxgen returns token_logprobs / top_logprobs instead (see logprobs_mode)"),
    "output_logits": (_OFF_FALSE, "jaxgen returns token_logprobs / top_logprobs instead (see logprobs_mode)"),
    "output_attentions": (_OFF_FALSE, "jaxgen does not return attentions"),
    "output_hidden_states": (_OFF_FALSE, "jaxgen does not return hidden states"),
    "return_dict_in_generate": (_OFF_FALSE, "jaxgen always returns a GenerationOutput"),
    "max_time": (_OFF_NONE, "jaxgen has no wall-clock limit; set max_new_tokens"),
    "decoder_start_token_id": (_OFF_NONE, "encoder-decoder only"),
    "encoder_repetition_penalty": ((None, 1, 1.0), "encoder-decoder only"),
    "encoder_no_repeat_ngram_size": ((None, 0), "encoder-decoder only"),
    # assisted / speculative decoding: lossless, it changes speed, not tokens; jaxgen has none
    "is_assistant": (_OFF_FALSE, "jaxgen has no assisted decoding"),
    "use_mtp": (_OFF_FALSE, "jaxgen has no assisted decoding"),
    "num_assistant_tokens": ((None, 20), "jaxgen has no assisted decoding"),
    "num_assistant_tokens_schedule": ((None, "constant"), "jaxgen has no assisted decoding"),
    "assistant_confidence_threshold": ((None, 0.4), "jaxgen has no assisted decoding"),
    "prompt_lookup_num_tokens": (_OFF_NONE, "jaxgen has no assisted decoding"),
    "max_matching_ngram_size": (_OFF_NONE, "jaxgen has no assisted decoding"),
    "assistant_early_exit": (_OFF_NONE, "jaxgen has no assisted decoding"),
    "assistant_lookbehind": ((None, 10), "jaxgen has no assisted decoding"),
    "target_lookbehind": ((None, 10), "jaxgen has no assisted decoding"),
    "speculation_type": (_OFF_NONE, "jaxgen has no assisted decoding"),
}
# Unsupported (an error): transformers' output would differ from what jaxgen can produce.
_UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "guidance_scale": ((None, 1, 1.0), "classifier-free guidance"),
    "top_h": (_OFF_NONE, "top-H sampling"),
    "remove_invalid_values": (_OFF_FALSE, "jaxgen raises NonFiniteLogitsError on NaN/inf logits instead"),
    "token_healing": (_OFF_FALSE, "token healing"),
    "watermarking_config": (_OFF_NONE, "watermarking"),
    "penalty_alpha": ((None, 0, 0.0), "contrastive search"),
    "dola_layers": (_OFF_NONE, "DoLa decoding"),
    "diversity_penalty": ((None, 0, 0.0), "group beam search"),
    "num_beam_groups": ((None, 1), "group beam search"),
    "constraints": (_OFF_NONE, "constrained beam search"),
    "force_words_ids": (_OFF_NONE, "constrained beam search"),
    "assistant_ensemble_weight": (_OFF_NONE, "speculative decoding with a biased verifier"),
}


def _is_off(value: Any, off: tuple) -> bool:
    return any(value is o or (type(value) is type(o) and value == o) or
               (_is_number(value) and _is_number(o) and value == o) for o in off)


def _sort_out_extras(extra: Mapping[str, Any], where: str = "", unknown_is_error: bool = False) -> None:
    """Judge the keys of ``extra`` (not GenerationConfig fields): metadata and runtime settings pass, ignored
    options warn (one line each, only when set to a value that does something), unsupported ones raise. Keys
    transformers does not know either: a warning in a config file (transformers keeps them as inert attributes),
    an error as an argument (a typo must not pass)."""
    if unknown_is_error:
        unknown = sorted(k for k in extra if k not in _METADATA | _RUNTIME | set(_IGNORED) | set(_UNSUPPORTED))
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; valid options: "
                             f"{sorted(f.name for f in dataclasses.fields(GenerationConfig))}.")
    for key, value in extra.items():
        value = _plain(value)
        if key in _METADATA or key in _RUNTIME:
            continue
        if key in _UNSUPPORTED:
            off, what = _UNSUPPORTED[key]
            if not _is_off(value, off):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise ValueError(f"GenerationConfig.{key}={shown} is not supported by jaxgen ({what}); remove it"
                                 f"{where} or set it to {off[-1]!r}.")
        elif key in _IGNORED:
            off, why = _IGNORED[key]
            if not _is_off(value, off):
                warnings.warn(f"GenerationConfig.{key}={value!r} is ignored: {why}.", IgnoredOptionWarning,
                              stacklevel=3)
        elif value is not None:  # transformers keeps unknown keys of a config file as inert attributes
            warnings.warn(f"GenerationConfig: {key!r}{where} is not a transformers generation option; ignored.",
                          IgnoredOptionWarning, stacklevel=3)


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
    # transformers' remaining decoder-only options (same meaning, same processor order).
    min_length: int = 0  # prompt (padded, as transformers counts it) + new tokens before EOS may come
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] | None = None  # ((ids, bias), ...); a dict works too
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    exponential_decay_length_penalty: tuple[int, float] | None = None  # (start, factor)
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    renormalize_logits: bool = False
    stop_strings: str | tuple[str, ...] | None = None  # needs generate(..., tokenizer=...)
    # vLLM's (OpenAI's) penalties, not transformers': subtracted from the scores of tokens already in the output.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0
    logprobs_mode: str = "raw"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        for name in ("eos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens"):
            ids = getattr(self, name)
            if not isinstance(ids, (list, tuple)) and getattr(ids, "ndim", None) == 1 and hasattr(ids, "tolist"):
                ids = ids.tolist()  # a 1-d array of ids
            if isinstance(ids, (list, tuple)):  # a tuple, so the config stays hashable
                object.__setattr__(self, name, tuple(_plain(t) for t in ids))
        # Nested lists (as JSON gives them) become nested tuples; anything unexpected stays for validate to name.
        if isinstance(self.bad_words_ids, (list, tuple)):
            object.__setattr__(self, "bad_words_ids", tuple(
                tuple(_plain(t) for t in w) if isinstance(w, (list, tuple)) else w for w in self.bad_words_ids))
        object.__setattr__(self, "sequence_bias", _normalise_sequence_bias(self.sequence_bias))
        decay = self.exponential_decay_length_penalty
        if isinstance(decay, (list, tuple)):
            object.__setattr__(self, "exponential_decay_length_penalty", tuple(_plain(x) for x in decay))
        if isinstance(self.stop_strings, list):
            object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

    def replace(self, **overrides: Any) -> "GenerationConfig":
        """A copy with ``overrides`` applied. transformers options jaxgen does not implement are judged as in
        :meth:`from_dict` (accepted at values that change nothing, else a warning or an error); names neither
        knows are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        _sort_out_extras({k: v for k, v in overrides.items() if k not in names}, unknown_is_error=True)
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if k in names})

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The EOS ids as a tuple (never the characters of a string: ``validate`` rejects strings)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, tuple):
            return self.eos_token_id
        return (self.eos_token_id,)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "the config") -> "GenerationConfig":
        """From a ``generation_config.json``-style dict (None means default). Keys that are not fields: metadata
        (``transformers_version``...) and runtime settings (``cache_implementation``...) pass; options that do
        not change the tokens (``use_cache``, ``output_scores``...) warn once each when set to a value that does
        something; options jaxgen cannot honour (``guidance_scale``...) raise ``ValueError`` naming the key unless
        set to their no-op value; keys transformers does not know either warn (transformers ignores them)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"GenerationConfig.from_dict expects a mapping of option names to values (a JSON "
                             f"object such as {{\"max_new_tokens\": 32}}), got {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        _sort_out_extras({k: v for k, v in d.items() if k not in names}, f" from {source}")
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
            return cls.from_dict(raw, source=file)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), the form ``from_dict`` and transformers read."""
        def lists(x: Any) -> Any:
            return [lists(v) for v in x] if isinstance(x, (list, tuple)) else x

        return {f.name: lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

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
        _validate_extra(self, vocab_size, bad, check_int, check_float)
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


def _validate_extra(self: "GenerationConfig", vocab: int, bad, check_int, check_float) -> None:
    """The options beyond the core set (transformers' remaining processors, stop strings, vLLM's penalties)."""
    ids_in = f"ids in [0, vocab_size={vocab})"
    check_int("min_length", 0)
    check_int("no_repeat_ngram_size", 0, allowed="must be an integer >= 0 and < 2**31 (0 disables it)")
    words = self.bad_words_ids
    if words is not None and not (isinstance(words, tuple) and words and
                                  all(_is_id_list(w, vocab, allow_empty=False) for w in words)):
        raise bad("bad_words_ids", f"must be a non-empty list of non-empty lists of token {ids_in}, or None")
    for field in ("suppress_tokens", "begin_suppress_tokens"):
        if getattr(self, field) is not None and not _is_id_list(getattr(self, field), vocab):
            raise bad(field, f"must be a list of token {ids_in}, or None")
    bias = self.sequence_bias
    if bias is not None and not (isinstance(bias, tuple) and bias and all(
            isinstance(pair, tuple) and len(pair) == 2 and _is_id_list(pair[0], vocab, allow_empty=False) and
            _is_number(pair[1]) and math.isfinite(pair[1]) and _fits_float32(pair[1]) for pair in bias)):
        raise bad("sequence_bias", f"must be a non-empty list of [token ids, bias] pairs (ids non-empty, {ids_in}; "
                  "bias a finite number), e.g. [[[12, 40], -2.0], [[7], 1.5]], or None")
    check_float("typical_p", lambda p: 0 < p <= 1, "must be in (0, 1] (1.0 disables typical sampling)")
    for field in ("epsilon_cutoff", "eta_cutoff"):
        check_float(field, lambda e: 0 <= e < 1, "must be in [0, 1) (0.0 disables it)")
    decay = self.exponential_decay_length_penalty
    if decay is not None:
        if not (isinstance(decay, tuple) and len(decay) == 2 and _is_int(decay[0]) and 0 <= decay[0] < INT32_LIMIT
                and _is_number(decay[1]) and math.isfinite(decay[1]) and 0 < decay[1] <= FLOAT32_MAX):
            raise bad("exponential_decay_length_penalty", "must be (start_index, decay_factor): an integer >= 0 "
                      "(new tokens before the penalty starts) and a finite factor > 0, or None")
        if not self.eos_token_ids:
            raise bad("exponential_decay_length_penalty", "raises the EOS score, so it needs eos_token_id")
    if self.forced_bos_token_id is not None and not (_is_int(self.forced_bos_token_id) and
                                                     0 <= self.forced_bos_token_id < vocab):
        raise bad("forced_bos_token_id", f"must be a token id in [0, vocab_size={vocab}) or None")
    forced = self.forced_eos_token_id
    if forced is not None and not ((_is_int(forced) and 0 <= forced < vocab) or
                                   _is_id_list(forced, vocab, allow_empty=False)):
        raise bad("forced_eos_token_id", f"must be a token id or a non-empty list of {ids_in}, or None")
    if not isinstance(self.renormalize_logits, bool):
        raise bad("renormalize_logits", "must be True or False")
    stops = self.stop_strings
    if stops is not None and not ((isinstance(stops, str) and stops) or (
            isinstance(stops, tuple) and stops and all(isinstance(x, str) and x for x in stops))):
        raise bad("stop_strings", "must be a non-empty string, a non-empty list of non-empty strings, or None")
    for field in ("presence_penalty", "frequency_penalty"):  # vLLM's range
        check_float(field, lambda x: -2 <= x <= 2, "must be in [-2, 2] (vLLM's range; 0.0 disables it)")


def _normalise_sequence_bias(value: Any) -> Any:
    """transformers' two spellings, ``[[ids, bias], ...]`` and ``{(ids...): bias}``, as ``((ids, bias), ...)``
    (a later entry for the same ids wins, as in transformers' dict); anything else unchanged for validate."""
    try:
        if isinstance(value, Mapping):
            pairs = list(value.items())
        elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            pairs = list(value)
        else:
            return value
        merged: dict = {}
        for ids, bias in pairs:
            key = tuple(_plain(t) for t in ids) if isinstance(ids, (list, tuple)) else ids
            hash(key)
            merged.pop(key, None)
            merged[key] = _plain(bias)
        return tuple(merged.items())
    except TypeError:  # unhashable or not iterable: validate names the field
        return value


def _is_id_list(x: Any, vocab: int, allow_empty: bool = True) -> bool:
    return isinstance(x, tuple) and (allow_empty or len(x) > 0) and all(_is_int(t) and 0 <= t < vocab for t in x)


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

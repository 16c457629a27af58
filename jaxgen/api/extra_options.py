"""Host side (numpy only) of the options in :mod:`jaxgen.decode.extra_processors`: a ``GenerationConfig`` and the
call's shapes -> the static :class:`ExtraPlan` and the traced :class:`ExtraParams`.

What is static: which processors exist, the shape buckets of the sequence tables (bad words, sequence bias) and of
the stop-string table; everything else (penalties, cut-offs, n-gram size, token sets as ``bool[V]`` masks, the
tables' contents, the steps at which BOS/EOS are forced) is traced, so changing it does not recompile.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxgen.api.generation_config import GenerationConfig
from jaxgen.decode.extra_processors import ExtraParams, ExtraPlan, SequenceTable


def _pow2(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


def sequence_table(pairs: list[tuple[tuple[int, ...], float]]) -> SequenceTable:
    """Sequences right-aligned in an ``[S, L]`` table, S and L rounded up to powers of two (at least 4) so that
    nearby counts and lengths share a program."""
    s, width = _pow2(len(pairs), 4), _pow2(max(len(ids) for ids, _ in pairs), 4)
    tokens = np.zeros((s, width), np.int32)
    lengths = np.zeros((s,), np.int32)
    bias = np.zeros((s,), np.float32)
    for i, (ids, b) in enumerate(pairs):
        tokens[i, width - len(ids):], lengths[i], bias[i] = ids, len(ids), b
    return SequenceTable(tokens=tokens, lengths=lengths, bias=bias)


def _mask(ids: Any, vocab: int) -> np.ndarray:
    m = np.zeros((vocab,), bool)
    m[list(ids)] = True
    return m


def effective_min_new_tokens(cfg: GenerationConfig, prompt_len: int) -> int:
    """transformers' two minimums as one: ``min_new_tokens`` wins when set (it overrides ``min_length``),
    else ``min_length`` counts the padded prompt (``input_ids.shape[-1]``), as transformers does."""
    if cfg.min_new_tokens > 0:
        return cfg.min_new_tokens
    return max(0, cfg.min_length - prompt_len)


def extra_setup(cfg: GenerationConfig, *, vocab: int, prompt_len: int, max_new: int, buffer_len: int,
                do_sample: bool, tokenizer: Any = None) -> tuple[ExtraPlan, ExtraParams]:
    """The plan and traced params for ``cfg`` on a call with a (padded) prompt of ``prompt_len`` tokens,
    ``max_new`` new tokens and an output buffer of ``buffer_len`` (the bucket)."""
    plan: dict[str, Any] = {}
    p: dict[str, Any] = {}
    f32, i32 = np.float32, np.int32
    eos = cfg.eos_token_ids
    if cfg.sequence_bias is not None:
        plan["sequence_bias"] = True
        p["sequence_bias"] = sequence_table(list(cfg.sequence_bias))
    if cfg.no_repeat_ngram_size > 0:
        plan["no_repeat_ngram"] = True
        p["no_repeat_ngram_size"] = i32(min(cfg.no_repeat_ngram_size, prompt_len + buffer_len + 1))
    if cfg.bad_words_ids is not None:
        # transformers drops a bad word that is a lone EOS id (EOS stays possible)
        words = [w for w in cfg.bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        if words:
            plan["bad_words"] = True
            p["bad_words"] = sequence_table([(w, -math.inf) for w in words])
    # transformers forces BOS when input_ids has one token (cur_len == 1): a one-token prompt's first step.
    if cfg.forced_bos_token_id is not None and prompt_len == 1:
        plan["forced_bos"] = True
        p["forced_bos"], p["forced_bos_step"] = _mask([cfg.forced_bos_token_id], vocab), i32(0)
    if cfg.forced_eos_token_id is not None:  # at cur_len == max_length - 1: the last new token
        forced = cfg.forced_eos_token_id
        plan["forced_eos"] = True
        p["forced_eos"] = _mask(forced if isinstance(forced, tuple) else [forced], vocab)
        p["forced_eos_step"] = i32(max_new - 1)
    if cfg.exponential_decay_length_penalty is not None and eos:
        start, factor = cfg.exponential_decay_length_penalty
        plan["exponential_decay"] = True
        steps = np.arange(buffer_len)
        with np.errstate(over="ignore"):  # float64 like Python's pow, then float32 like transformers' product
            decay = np.where(steps > start, np.power(float(factor), (steps - start).astype(np.float64)) - 1.0, 0.0)
        p["decay"] = decay.astype(f32)
    if cfg.suppress_tokens is not None:
        plan["suppress"] = True
        p["suppress"] = _mask(cfg.suppress_tokens, vocab)
    if cfg.begin_suppress_tokens is not None:
        plan["begin_suppress"] = True
        p["begin_suppress"] = _mask(cfg.begin_suppress_tokens, vocab)
        # transformers' begin_index: the prompt length, one more when a one-token prompt gets a forced BOS
        p["begin_suppress_step"] = i32(1 if prompt_len == 1 and cfg.forced_bos_token_id is not None else 0)
    if cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0:
        plan["presence_frequency"] = True
        p["presence_penalty"], p["frequency_penalty"] = f32(cfg.presence_penalty), f32(cfg.frequency_penalty)
    if do_sample:  # sampling warpers, as in transformers (greedy and beam search ignore them)
        if cfg.typical_p < 1.0:
            plan["typical"], p["typical_p"] = True, f32(cfg.typical_p)
        if cfg.epsilon_cutoff > 0.0:
            plan["epsilon"], p["epsilon_cutoff"] = True, f32(cfg.epsilon_cutoff)
        if cfg.eta_cutoff > 0.0:
            plan["eta"], p["eta_cutoff"] = True, f32(cfg.eta_cutoff)
    if cfg.renormalize_logits:
        plan["renormalize"] = True
    if cfg.stop_strings is not None:
        if tokenizer is None:
            raise ValueError(f"GenerationConfig.stop_strings={cfg.stop_strings!r} needs the tokenizer to find the "
                             "strings in the tokens: pass generate(..., tokenizer=tokenizer) (generate_text passes "
                             "its own).")
        from jaxgen.text.stop_strings import stop_table

        table, window = stop_table(tokenizer, cfg.stop_strings, vocab)
        plan["stop_window"], p["stop"] = window, table
    return ExtraPlan(**plan), ExtraParams(**p)

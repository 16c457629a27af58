"""Host-side input handling shared by ``generate`` and ``score``: checks, shape buckets, memory and context limits.

Everything here is numpy (no jax operation), so preparing a call in a known bucket compiles nothing.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from jaxgen.config import ModelConfig

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Static size used for a dynamic length ``n``: the next power of two, at least ``minimum``."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def left_pad(prompts, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int32 ``[B, T]``: token-id lists left-padded with ``pad`` to the longest (mask 1 = token)."""
    t = max(map(len, prompts))
    ids = np.full((len(prompts), t), pad, np.int32)
    mask = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):], mask[i, t - len(p):] = p, 1
    return ids, mask


def check_tokens(config: ModelConfig, input_ids: Any, attention_mask: Any, *,
                 left_padded: bool, extra_ids: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(ids int32[B, T], mask int32[B, T])``, ids as given (padded slots may hold any id).

    ``left_padded``: padding must come first in each row (generation); otherwise any one contiguous run of tokens
    per row is accepted (scoring). Feed the model :func:`model_tokens` of them, never the ids as given.
    """
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise ValueError(f"input_ids must be an integer array [batch, length], got dtype {ids.dtype} shape "
                         f"{ids.shape}.")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {ids.shape}); give at least one token per row.")
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}.")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (token).")
    mask = mask.astype(np.int32)
    counts = mask.sum(axis=1)
    if (counts == 0).any():
        raise ValueError(f"attention_mask rows {np.flatnonzero(counts == 0).tolist()} have no tokens: every row "
                         "needs at least one token.")
    if left_padded:
        if (np.diff(mask, axis=1) < 0).any():
            raise ValueError("attention_mask has padding after tokens: jaxgen expects left padding (pad at the "
                             "start of each row), as transformers' generate does for decoder-only models.")
    else:
        first = mask.argmax(axis=1)
        last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        if (last - first + 1 != counts).any():
            raise ValueError("attention_mask must mark one contiguous run of tokens per row (left or right "
                             "padding).")
    vocab = config.vocab_size
    real = ids[mask == 1]
    if extra_ids:  # ids the caller maps before the model reads them (an image placeholder beyond the vocabulary)
        real = real[~np.isin(real, extra_ids)]
    if real.size and (real.min() < 0 or real.max() >= vocab):
        bad = int(real.min()) if real.min() < 0 else int(real.max())
        raise ValueError(f"input_ids holds token id {bad}, outside [0, vocab_size={vocab}) of the model.")
    return ids.astype(np.int32), mask


def to_device(x: np.ndarray):
    """A host array on the default device with ``device_put`` (``jnp.asarray`` compiles a small program per
    shape; this compiles nothing)."""
    import jax

    return jax.device_put(np.ascontiguousarray(x))


def model_tokens(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the model reads: padded slots hold token 0, a valid embedding row, so whatever id a caller pads with
    (an out-of-vocabulary pad id, -1) can never bring NaN or an out-of-range lookup into real positions."""
    return np.where(mask == 1, ids, 0).astype(np.int32)


def check_context(config: ModelConfig, prompt_length: int, max_new_tokens: int) -> None:
    """Prompts longer than the context are an error; generating past it warns (RoPE extrapolates, as people do on
    purpose; transformers warns too) and is an error for learned absolute positions, which have no rows there."""
    context = config.max_position_embeddings
    if prompt_length > context:
        raise ValueError(f"a prompt has {prompt_length} tokens, longer than the model's context "
                         f"(max_position_embeddings={context}); shorten it.")
    total = prompt_length + max_new_tokens
    for spec in getattr(config, "layers", ()) or ():
        rope = getattr(spec.attention, "rope", None)
        edge = getattr(rope, "original_max_position_embeddings", None)
        if getattr(rope, "rope_type", None) == "longrope" and edge and prompt_length <= edge < total:
            # transformers' generate recomputes its whole cache with the long factors at that point; jaxgen keeps
            # the keys it cached with the short ones, so tokens past it can differ from transformers'.
            warnings.warn(f"prompt ({prompt_length}) + max_new_tokens ({max_new_tokens}) crosses LongRoPE's "
                          f"original_max_position_embeddings={edge}: past it, tokens may differ from transformers', "
                          "which re-encodes the whole sequence with the long factors.", stacklevel=3)
            break
    if total > context:
        if getattr(config, "position_embedding", "rope") == "learned":
            raise ValueError(f"prompt ({prompt_length}) + max_new_tokens ({max_new_tokens}) = {total} positions, "
                             f"past the model's {context} learned positions; set max_new_tokens <= "
                             f"{context - prompt_length}.")
        warnings.warn(f"prompt ({prompt_length}) + max_new_tokens ({max_new_tokens}) = {total} tokens exceeds "
                      f"max_position_embeddings={context}: RoPE positions past the context are extrapolated.",
                      stacklevel=3)


def available_bytes() -> int | None:
    """Free memory of the first device: the accelerator's allocator limit, else the host's available RAM."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends do not report memory
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def call_bytes(config: ModelConfig, rows: int, prompt_bucket: int, new_bucket: int, *, itemsize: int,
               top_logprobs: int, num_beams: int, num_eos: int) -> int:
    """Bytes the compiled program allocates for one call: KV cache, per-row logits, output buffers.

    ``rows`` counts prompt rows times returned sequences (sampling) or prompts (beam search).
    """
    beams = max(1, num_beams)
    cache_rows = rows * beams
    capacity = prompt_bucket + new_bucket
    kv = 2 * config.num_hidden_layers * cache_rows * config.num_key_value_heads * capacity * config.head_dim
    per_token = 4 + 4 + 8 * top_logprobs  # token id, logprob, top-k ids and logprobs
    # Beam search keeps running, finished and candidate hypotheses: about (2 + max(2, 1 + n_eos)) beams' worth.
    hyps = rows * beams * (2 + max(2, 1 + num_eos)) if num_beams > 1 else rows
    return (kv * itemsize + cache_rows * capacity + 3 * cache_rows * config.vocab_size * 4
            + hyps * new_bucket * per_token)


def check_memory(config: ModelConfig, rows: int, prompt_bucket: int, max_new_tokens: int, **sizes: Any) -> None:
    """Refuse, before compiling, a call whose buffers cannot fit in free memory, saying what would fit."""
    free = available_bytes()
    if free is None:
        return
    need = call_bytes(config, rows, prompt_bucket, bucket(max_new_tokens), **sizes)
    if need <= free:
        return
    fits = 0
    n = MIN_BUCKET
    while call_bytes(config, rows, prompt_bucket, n, **sizes) <= free and n < 2**31:
        fits, n = n, n * 2
    gib = lambda x: f"{x / 2**30:.1f} GiB"
    hint = (f"at most max_new_tokens={fits} fit at this batch size" if fits
            else "not even the smallest bucket fits: use fewer rows or a smaller dtype")
    raise ValueError(f"max_new_tokens={max_new_tokens} with {rows} row(s) needs {gib(need)} for the KV cache and "
                     f"output buffers, but only {gib(free)} is free on {_device_name()}; {hint}.")


def _device_name() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{d.id}"

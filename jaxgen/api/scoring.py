"""Teacher-forced scoring: the logprob of every given token and the top-k alternatives at each position.

Like vLLM's ``prompt_logprobs`` / TGI's ``decoder_input_details``: one compiled causal forward pass over the
whole sequence (no KV cache, no decode loop), lengths and batch bucketed so that similar inputs reuse the program.
The logprob at position ``t`` is ``log_softmax(logits[t - 1])[token[t]]``: raw model probabilities, no sampling
processors. A row's first real token has nothing before it, so it gets NaN (and ids -1), as does padding.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import Array

from jaxgen.api.images import check_images, model_ids
from jaxgen.api.inputs import bucket, check_tokens, model_tokens, to_device
from jaxgen.decode.loop import nonfinite_rows, prompt_positions
from jaxgen.decode.topk import top_k
from jaxgen.errors import NonFiniteLogitsError
from jaxgen.model import Model, make_step
from jaxgen.nn.vision import ImageInputs
from jaxgen.x64 import x64_off

__all__ = ["ScoreOutput", "forward_logits", "score"]


@struct.dataclass
class ScoreOutput:
    """Result of :func:`score` for ``input_ids[B, T]`` and ``k = top_logprobs``.

    - ``token_logprobs`` float32 ``[B, T]``: logprob of ``input_ids[b, t]`` given the tokens before it; NaN at each
      row's first real token and at padding.
    - ``top_token_ids`` int32 / ``top_logprobs`` float32 ``[B, T, k]``: the k most likely tokens at position ``t``
      (predicted from the tokens before it), most likely first; -1 / NaN where ``token_logprobs`` is NaN.
    - ``input_ids`` int32 / ``attention_mask`` int32 ``[B, T]``: the inputs, for reference.
    """

    token_logprobs: Array
    top_token_ids: Array
    top_logprobs: Array
    input_ids: Array
    attention_mask: Array

    def total_logprob(self) -> Array:
        """float32 ``[B]``: sum of the defined token logprobs of each row (the sequence's log-likelihood)."""
        return jnp.nansum(self.token_logprobs, axis=-1)


def _check(model: Model, input_ids: Any, attention_mask: Any,
           extra_ids: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = check_tokens(model.config, input_ids, attention_mask, left_padded=False, extra_ids=extra_ids)
    longest = int(mask.sum(axis=1).max())
    if longest > model.config.max_position_embeddings:
        raise ValueError(f"a row has {longest} tokens, more than the model's context "
                         f"(max_position_embeddings={model.config.max_position_embeddings}).")
    return ids, mask


def _raise_if_nonfinite(bad: np.ndarray, model: Model) -> None:
    """``bad[B, T]``: positions whose logits held NaN or +inf."""
    rows, cols = np.nonzero(bad)
    if rows.size:
        raise NonFiniteLogitsError(
            f"the model's logits hold NaN or +inf at position {int(cols[0])} of row {int(rows[0])}: the weights "
            f"contain NaN/inf, or {model.dtype.name} overflowed; check the checkpoint, or load with "
            "dtype='float32' or 'bfloat16'.", row=int(rows[0]), step=int(cols[0]))


def _bucketed(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to a bucketed length and batch (masked, so causal attention never sees the extra slots)."""
    b, t = ids.shape
    bb, tb = bucket(b, 1), bucket(t)
    ids_b = np.zeros((bb, tb), np.int32)
    mask_b = np.zeros((bb, tb), np.int32)
    ids_b[:b, :t], mask_b[:b, :t] = model_tokens(ids, mask), mask
    mask_b[b:, 0] = 1  # filler rows get one token, so no row is all padding
    return ids_b, mask_b


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logits(graphdef, params, ids: Array, mask: Array, images: ImageInputs | None = None) -> Array:
    logits, _ = make_step(graphdef)(params, ids, prompt_positions(mask), None, mask, None, images)
    return logits


@functools.partial(jax.jit, static_argnames=("graphdef", "k"))
def _score(graphdef, k: int, params, ids: Array, mask: Array) -> tuple[Array, Array, Array, Array]:
    logits, _ = make_step(graphdef)(params, ids, prompt_positions(mask), None, mask)
    bad = nonfinite_rows(logits) & (mask > 0)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)  # predicts tokens 1..T-1
    chosen = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    defined = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    chosen = jnp.where(defined, chosen, jnp.nan)
    if k:
        top_lp, top_ids = top_k(logp, k)
        top_lp = jnp.where(defined[..., None], top_lp, jnp.nan)
        top_ids = jnp.where(defined[..., None], top_ids, -1)
    else:
        top_lp = jnp.zeros(logp.shape[:2] + (0,), jnp.float32)
        top_ids = jnp.zeros(logp.shape[:2] + (0,), jnp.int32)
    pad = lambda x, value: jnp.concatenate([jnp.full((x.shape[0], 1) + x.shape[2:], value, x.dtype), x], axis=1)
    return pad(chosen, jnp.nan), pad(top_ids, -1), pad(top_lp, jnp.nan), bad


@x64_off
def score(model: Model, input_ids: Any, attention_mask: Any = None, top_logprobs: int = 0) -> ScoreOutput:
    """Teacher-forced logprobs of ``input_ids`` int ``[B, T]`` (or ``[T]``) under ``model``; see :class:`ScoreOutput`.

    ``attention_mask`` ``[B, T]``: 1 for tokens, 0 for padding (left or right); None = no padding. Position ids
    count real tokens only (``cumsum(mask) - 1``, as transformers' ``generate``), so a padded row scores like the
    same row alone. ``top_logprobs``: k alternatives per position (0 = none). One compiled forward pass; lengths
    are bucketed to powers of two (at least 16) and the batch to a power of two.
    """
    if not isinstance(top_logprobs, (int, np.integer)) or isinstance(top_logprobs, bool) or \
            not 0 <= top_logprobs <= model.config.vocab_size:
        raise ValueError(f"top_logprobs={top_logprobs!r} is invalid: must be an integer in "
                         f"[0, vocab_size={model.config.vocab_size}].")
    ids, mask = _check(model, input_ids, attention_mask)
    b, t = ids.shape
    ids_b, mask_b = _bucketed(ids, mask)
    lp, top_ids, top_lp, bad = (np.asarray(x)[:b, :t] for x in _score(model.graphdef, int(top_logprobs),
                                                                      model.params, ids_b, mask_b))
    _raise_if_nonfinite(bad, model)
    return ScoreOutput(token_logprobs=to_device(lp), top_token_ids=to_device(top_ids),
                       top_logprobs=to_device(top_lp), input_ids=to_device(ids), attention_mask=to_device(mask))


@x64_off
def forward_logits(model: Model, input_ids: Any, attention_mask: Any = None, *, pixel_values: Any = None,
                   token_type_ids: Any = None, target_sizes: Any = None) -> Array:
    """float32 ``[B, T, V]``: the model's logits at every position (the full tensor: mind the memory).

    Same conventions and buckets as :func:`score`; used by ``jaxgen.crosscheck`` to compare logits directly.
    Images as in :func:`jaxgen.generate` (the processor's ``pixel_values`` and ``token_type_ids`` /
    ``target_sizes``).
    """
    vision = model.config.vision
    ids, mask = _check(model, input_ids, attention_mask, (vision.image_token_id,) if vision is not None else ())
    host = check_images(model.config, ids, mask, pixel_values, token_type_ids, target_sizes)
    b, t = ids.shape
    ids_b, mask_b = _bucketed(model_ids(model.config, ids, host), mask)
    images = None
    if host is not None:
        pad = lambda x: np.pad(x, ((0, ids_b.shape[0] - b), (0, ids_b.shape[1] - t)), constant_values=-1)  # noqa
        images = ImageInputs(pixel_values=host.pixel_values, slots=pad(host.slots),
                             blocks=None if host.blocks is None else pad(host.blocks), target_sizes=host.target_sizes)
    logits = np.asarray(_logits(model.graphdef, model.params, ids_b, mask_b, images))[:b, :t]
    _raise_if_nonfinite(np.any(np.isnan(logits) | (logits == np.inf), axis=-1) & (mask > 0), model)
    return to_device(logits)

"""Sampling in transformers with jaxgen's uniforms, so that both frameworks draw the same tokens from one seed.

jaxgen samples by inverse CDF: at generation step ``t`` row ``r`` draws ``u = uniform(fold_in(row_key[r], t))``
and takes the first token, in token-id order, whose cumulative probability under ``softmax(processed scores)``
exceeds ``u * total`` (:func:`jaxgen.decode.sampling.sample_from_uniform`). :class:`JaxgenUniformSampler` is a
transformers ``LogitsProcessor`` that makes the same choice from the same ``u`` and returns a one-hot score row
(``-inf`` everywhere but the chosen token), so ``torch.multinomial(softmax(scores))`` inside transformers'
``generate`` can only pick that token.

transformers appends a user's ``logits_processor`` list *before* its own sampling warpers (temperature, top-k,
top-p, min-p), so the sampler cannot simply be "added last". :func:`sampling_kwargs` builds the arguments for
``model.generate``: the warpers are switched off in generate's own list and re-created (transformers' own classes,
in transformers' order) at the head of ``logits_processor``, followed by the sampler::

    kwargs, sampler = sampling_kwargs(uniforms, prompt_length, temperature=0.7, top_k=20, top_p=0.9)
    hf_model.generate(input_ids, max_new_tokens=n, **kwargs)

Guarantee: when transformers' processed scores and jaxgen's give the same CDF up to float rounding, both
frameworks pick the same token at every step from the same seed, as long as the draw ``u * total`` does not lie
within that rounding of a CDF boundary. Limit: a draw that lands within rounding (about 1e-6 relative in float32,
more in bfloat16) of a boundary may pick the neighbouring token on one side. The sampler records, per row and
step, the chosen token and the distance from the draw to the nearest inner CDF boundary (as a fraction of the
total probability), and ``jaxgen.crosscheck`` reports a divergence at a step whose distance is below its tolerance
as a near-tie rather than a mismatch.

This module imports torch and transformers; ``import jaxgen`` does not import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

__all__ = ["JaxgenUniformSampler", "inverse_cdf", "sampling_kwargs", "uniforms_for"]


def uniforms_for(row_keys: Any, num_steps: int) -> np.ndarray:
    """``float32[B, num_steps]``: the uniforms jaxgen draws for rows with keys ``row_keys[B]``.

    ``row_keys``: typed keys or ``uint32[B, 2]`` key data (e.g. ``GenerationOutput.keys``).
    """
    import jax.numpy as jnp

    from jaxgen.decode.sampling import as_typed_keys, uniforms_table

    keys = as_typed_keys(jnp.asarray(row_keys))
    if keys.ndim != 1:
        raise ValueError(f"row_keys must hold one key per row (shape [B]); got key shape {keys.shape}.")
    return np.asarray(uniforms_table(keys, int(num_steps)))


def inverse_cdf(scores: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """jaxgen's inverse-CDF choice on ``scores[B, V]`` with uniforms ``u[B]``, computed in float64.

    Returns ``(token int64[B], boundary_distance float64[B])``: the distance between the draw ``u * total`` and
    the nearest CDF value strictly inside ``(0, total)``, divided by ``total`` (``inf`` when only one token has
    probability, so no rounding can change the choice).
    """
    probs = torch.softmax(scores.to(torch.float64), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    total = cdf[:, -1:]
    threshold = u.to(torch.float64)[:, None] * total
    # First index whose cumulative probability exceeds the threshold (argmax returns the first True).
    token = torch.argmax((cdf > threshold).to(torch.int8), dim=-1)
    inner = (cdf > 0) & (cdf < total)
    gap = torch.where(inner, (cdf - threshold).abs(), torch.full_like(cdf, float("inf")))
    return token, (gap.min(dim=-1).values / total[:, 0])


class JaxgenUniformSampler(LogitsProcessor):
    """Turns processed scores into a one-hot row at the token jaxgen's inverse-CDF sampler would draw.

    ``uniforms``: ``[B, N]`` per-row, per-step uniforms (:func:`uniforms_for`); rows in the order of
    transformers' batch (with ``num_return_sequences=R`` transformers repeats each prompt R times in place, the
    order of ``GenerationOutput.keys``). ``prompt_length``: the (padded) prompt length, so that the step is
    ``input_ids.shape[1] - prompt_length``. Must run after every other processor; see :func:`sampling_kwargs`.

    After generation, ``chosen[B, N]`` holds the picked tokens (-1 for steps not reached) and
    ``boundary_distance[B, N]`` the distance of each draw to the nearest CDF boundary (NaN for steps not reached).
    """

    def __init__(self, uniforms: Any, prompt_length: int):
        u = np.asarray(uniforms, dtype=np.float32)
        if u.ndim != 2:
            raise ValueError(f"uniforms must be [rows, steps]; got shape {u.shape}.")
        if not ((u >= 0) & (u < 1)).all():
            raise ValueError("uniforms must lie in [0, 1).")
        self.uniforms = u
        self.prompt_length = int(prompt_length)
        self.chosen = np.full(u.shape, -1, np.int64)
        self.boundary_distance = np.full(u.shape, np.nan, np.float64)

    @classmethod
    def from_keys(cls, row_keys: Any, num_steps: int, prompt_length: int) -> "JaxgenUniformSampler":
        return cls(uniforms_for(row_keys, num_steps), prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, steps = self.uniforms.shape
        step = input_ids.shape[1] - self.prompt_length
        if scores.shape[0] != rows:
            raise ValueError(f"JaxgenUniformSampler has uniforms for {rows} rows but transformers' batch has "
                             f"{scores.shape[0]} (beam sampling is not supported; num_return_sequences must match).")
        if not 0 <= step < steps:
            raise ValueError(f"JaxgenUniformSampler: generation step {step} is outside its table of {steps} "
                             f"uniforms per row (prompt_length={self.prompt_length}); build it with at least "
                             "max_new_tokens steps.")
        u = torch.from_numpy(self.uniforms[:, step].astype(np.float64)).to(scores.device)
        token, distance = inverse_cdf(scores, u)
        self.chosen[:, step] = token.cpu().numpy()
        self.boundary_distance[:, step] = distance.cpu().numpy()
        one_hot = torch.full_like(scores, float("-inf"))
        return one_hot.scatter(1, token[:, None], 0.0)


def sampling_kwargs(uniforms: Any, prompt_length: int, *, temperature: float = 1.0, top_k: int | None = 50,
                    top_p: float = 1.0, min_p: float | None = None) -> tuple[dict[str, Any], JaxgenUniformSampler]:
    """Arguments for ``transformers`` ``model.generate`` that sample with jaxgen's uniforms.

    Returns ``(kwargs, sampler)``: ``kwargs`` sets ``do_sample=True``, disables generate's own warpers and passes
    ``logits_processor=[Temperature, TopK, TopP, MinP (those that are active, transformers' classes and order),
    sampler]``. Processors that transformers runs before the warpers (repetition penalty, min-new-tokens, ...)
    still come from generate's own arguments. ``sampler`` holds the per-step record after the call.
    """
    warpers: list[LogitsProcessor] = []
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=1))
    sampler = JaxgenUniformSampler(uniforms, prompt_length)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None,
                  logits_processor=LogitsProcessorList([*warpers, sampler]))
    return kwargs, sampler

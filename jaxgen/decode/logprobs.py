"""In-loop logprob capture into fixed-size float32 buffers (never ``[B, T, V]``)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from jaxgen.decode.topk import top_k


def token_and_top_logprobs(logprobs: Array, tokens: Array, k: int) -> tuple[Array, Array, Array]:
    """From ``logprobs[B, V]`` and chosen ``tokens[B]``: ``(chosen[B], top_ids int32[B, k], top_lp[B, k])``.

    Top entries are most likely first; ties go to the lower token id.
    """
    chosen = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    if k == 0:
        b = logprobs.shape[0]
        return chosen, jnp.zeros((b, 0), jnp.int32), jnp.zeros((b, 0), jnp.float32)
    top_lp, top_ids = top_k(logprobs, k)
    return chosen, top_ids, top_lp

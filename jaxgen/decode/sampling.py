"""Token choice: greedy argmax and inverse-CDF sampling from per-row, per-step uniforms.

A row's uniform at generation step ``t`` is ``uniform(fold_in(row_key, t))``: it depends only on the row's own
key and the step, never on batch neighbours, row position or padding. Sampling walks the CDF of the processed
distribution in token-id order, so any framework given the same uniforms draws the same token
(see ``jaxgen.crosscheck.hf_uniform_sampler``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def as_typed_keys(key: Array) -> Array:
    """Accept new-style typed keys or legacy ``uint32[..., 2]`` keys; return typed keys."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def step_uniforms(row_keys: Array, step: Array) -> Array:
    """``float32[B]`` uniforms in [0, 1) for generation step ``step`` from typed ``row_keys[B]``."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), (), jnp.float32))(row_keys)


def uniforms_table(row_keys: Array, num_steps: int) -> Array:
    """``float32[B, num_steps]``: every uniform a sampled generation will consume (for cross-framework replay)."""
    return jax.vmap(lambda s: step_uniforms(row_keys, s), out_axes=1)(jnp.arange(num_steps))


def sample_from_uniform(scores: Array, u: Array) -> Array:
    """Inverse-CDF draw: the first token whose cumulative probability exceeds ``u``. scores ``[B, V]``, u ``[B]``."""
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    # Scale by the total so float rounding of the sum can never push the threshold past the last token.
    threshold = (u * cdf[:, -1])[:, None]
    token = jnp.argmax(cdf > threshold, axis=-1)
    return token.astype(jnp.int32)


def greedy(scores: Array) -> Array:
    """argmax over the vocabulary, first index on ties. ``[B, V] -> int32[B]``."""
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)

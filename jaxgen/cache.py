"""The KV cache: a plain pytree of fixed capacity, updated by pure functions.

Slots are shared by every row: slot ``i`` of each row holds that row's ``i``-th token of the (left-padded)
sequence. ``valid`` marks which slots hold real tokens, so padding is never attended to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

from jaxgen.config import ModelConfig


@struct.dataclass
class KVCache:
    """Keys/values per layer ``[B, kv_heads, S, head_dim]``; ``valid: bool[B, S]``; ``index``: next slot.

    Head-major, so attention reads each head's slots contiguously (no per-step transpose of the cache).
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    valid: Array
    index: Array

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]


def init_cache(config: ModelConfig, batch_size: int, capacity: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An empty cache for ``batch_size`` rows and ``capacity`` token slots."""
    shape = (batch_size, config.num_key_value_heads, capacity, config.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
    return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers)),
                   valid=jnp.zeros((batch_size, capacity), bool), index=jnp.zeros((), jnp.int32))


def reorder_rows(cache: KVCache, rows: Array) -> KVCache:
    """Gather cache rows (beam search): row ``i`` of the result is row ``rows[i]`` of ``cache``."""
    take = lambda x: jnp.take(x, rows, axis=0)
    return cache.replace(keys=tuple(map(take, cache.keys)), values=tuple(map(take, cache.values)),
                         valid=take(cache.valid))


def attention_mask(cache: KVCache, num_new: int, window: int | None) -> Array:
    """Which slots each new token may attend to: ``bool[B, num_new, S]`` (after ``cache.valid`` is updated).

    Causal over slots, restricted to valid slots, and to the last ``window`` slots when a sliding window is set
    (transformers compares slot indices too, so left padding counts inside the window).
    """
    q_slot = cache.index + jnp.arange(num_new)[:, None]
    k_slot = jnp.arange(cache.capacity)[None, :]
    allowed = k_slot <= q_slot
    if window is not None:
        allowed &= k_slot > q_slot - window
    return cache.valid[:, None, :] & allowed[None]


def write_valid(cache: KVCache, mask: Array) -> KVCache:
    """Mark the ``mask[B, t]`` slots starting at ``cache.index`` (real tokens True)."""
    return cache.replace(valid=jax.lax.dynamic_update_slice(cache.valid, mask.astype(bool), (0, cache.index)))

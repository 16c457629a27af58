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
    Hybrid models (Qwen3.5) add per-layer ``conv [B, K - 1, C]`` and ``recurrent [B, Hv, Dk, Dv]`` (float32)
    states for their linear-attention layers; an entry is None where the layer has the other kind (linear layers
    have no keys/values). Attention-only models leave both ``()``, so their pytree is unchanged.
    """

    keys: tuple[Array | None, ...]
    values: tuple[Array | None, ...]
    valid: Array
    index: Array
    conv: tuple[Array | None, ...] = ()
    recurrent: tuple[Array | None, ...] = ()

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]


def init_cache(config: ModelConfig, batch_size: int, capacity: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An empty cache for ``batch_size`` rows and ``capacity`` token slots."""
    linear = [spec.linear for spec in config.layers]
    # Per-layer shapes (Gemma 4's global layers differ); None where a layer has no KV of its own (linear
    # attention, or KV sharing: it reads layer `kv_source`'s entry).
    own = [lin is None and spec.attention.kv_source is None for lin, spec in zip(linear, config.layers)]
    # DeepSeek-V3 (latent attention): keys [B, 1, S, kv_lora_rank] hold the latent, values [B, 1, S,
    # qk_rope_head_dim] the rotated shared key (ModelConfig.layer_cache_dims).
    dims = [config.layer_cache_dims(i) for i in range(len(own))]
    shape = lambda i, d: (batch_size, dims[i][0], capacity, dims[i][d])  # noqa: E731
    kv = lambda d: tuple(jnp.zeros(shape(i, d), dtype) if own[i] else None for i in range(len(own)))  # noqa: E731
    cache = KVCache(keys=kv(1), values=kv(2), valid=jnp.zeros((batch_size, capacity), bool),
                    index=jnp.zeros((), jnp.int32))
    if not any(linear):
        return cache
    conv = tuple(lin and jnp.zeros((batch_size, lin.conv_kernel - 1, lin.conv_dim), dtype) for lin in linear)
    rec = tuple(lin and jnp.zeros((batch_size, lin.num_v_heads, lin.k_head_dim, lin.v_head_dim), jnp.float32)
                for lin in linear)
    return cache.replace(conv=conv, recurrent=rec)


def _row_leaves(cache: KVCache):
    """Every row-leading part of the cache (all but the shared write index), as one pytree."""
    return (cache.keys, cache.values, cache.valid, cache.conv, cache.recurrent)


def _with_row_leaves(cache: KVCache, leaves) -> KVCache:
    keys, values, valid, conv, recurrent = leaves
    return cache.replace(keys=keys, values=values, valid=valid, conv=conv, recurrent=recurrent)


def reorder_rows(cache: KVCache, rows: Array) -> KVCache:
    """Gather cache rows (beam search): row ``i`` of the result is row ``rows[i]`` of ``cache``."""
    take = lambda x: jnp.take(x, rows, axis=0)  # noqa: E731 (one gather per leaf, any cache kind)
    return _with_row_leaves(cache, jax.tree.map(take, _row_leaves(cache)))


def attention_mask(cache: KVCache, num_new: int, window: int | None, blocks: Array | None = None) -> Array:
    """Which slots each new token may attend to: ``bool[B, num_new, S]`` (after ``cache.valid`` is updated).

    Causal over slots, restricted to valid slots, and to the last ``window`` slots when a sliding window is set
    (transformers compares slot indices too, so left padding counts inside the window). ``blocks`` int32
    ``[B, num_new]`` (Gemma 3's images): new tokens of one block (id >= 0) also see each other's later slots.
    """
    q_slot = cache.index + jnp.arange(num_new)[:, None]
    k_slot = jnp.arange(cache.capacity)[None, :]
    allowed = (k_slot <= q_slot)[None]
    if blocks is not None:  # transformers: OR(causal, same block), then AND(window) on sliding layers
        k_block = jax.lax.dynamic_update_slice(jnp.full((blocks.shape[0], cache.capacity), -1, blocks.dtype),
                                               blocks, (0, cache.index))
        allowed = allowed | ((blocks[:, :, None] >= 0) & (blocks[:, :, None] == k_block[:, None, :]))
    if window is not None:
        allowed &= (k_slot > q_slot - window)[None]
    return cache.valid[:, None, :] & allowed


def write_valid(cache: KVCache, mask: Array) -> KVCache:
    """Mark the ``mask[B, t]`` slots starting at ``cache.index`` (real tokens True)."""
    return cache.replace(valid=jax.lax.dynamic_update_slice(cache.valid, mask.astype(bool), (0, cache.index)))


# Row helpers for a cache whose rows are independent requests (jaxgen.engine): fixed-size index arrays, where an
# index >= batch_size is a filler entry that is dropped, so one compiled program serves any number of rows.

def copy_rows(cache: KVCache, src: Array, dst: Array) -> KVCache:
    """Row ``dst[i]`` becomes a copy of row ``src[i]`` (keys, values, validity); ``dst[i] >= B`` is dropped."""
    put = lambda x: x.at[dst].set(jnp.take(x, src, axis=0, mode="clip"), mode="drop")  # noqa: E731
    return _with_row_leaves(cache, jax.tree.map(put, _row_leaves(cache)))


def write_rows(cache: KVCache, rows: Array, part: KVCache, start: Array) -> KVCache:
    """Put ``part`` (``k`` rows of ``L`` slots, e.g. a prefill) at slots ``[start, start + L)`` of ``rows[k]``;
    every other slot of those rows becomes invalid. ``rows[i] >= B`` is dropped."""
    slots = start + jnp.arange(part.capacity)

    def put(x: Array | None, p: Array | None) -> Array | None:  # x [B, H, S, D], p [k, H, L, D]; None: no KV
        if x is None:
            return None
        return x.at[rows[:, None], :, slots[None, :], :].set(p.transpose(0, 2, 1, 3).astype(x.dtype), mode="drop")

    def put_row(x: Array | None, p: Array | None) -> Array | None:  # per-row states (linear-attention layers)
        return None if x is None else x.at[rows].set(p.astype(x.dtype), mode="drop")

    valid = jax.lax.dynamic_update_slice(jnp.zeros((rows.shape[0], cache.capacity), bool), part.valid, (0, start))
    return cache.replace(keys=tuple(map(put, cache.keys, part.keys)),
                         values=tuple(map(put, cache.values, part.values)),
                         valid=cache.valid.at[rows].set(valid, mode="drop"),
                         conv=tuple(map(put_row, cache.conv, part.conv)),
                         recurrent=tuple(map(put_row, cache.recurrent, part.recurrent)))


def shift_slots(cache: KVCache, d: Array) -> KVCache:
    """Move every row's slots ``d`` to the left (slot ``i + d`` -> ``i``; the last ``d`` become invalid) and the
    write index with them. Relative slot distances, all that attention and sliding windows compare, are kept.
    Linear-attention states (conv, recurrent) summarise a row's whole past and hold no slots: they stay."""
    roll = lambda x: None if x is None else jnp.roll(x, -d, axis=2)  # noqa: E731 (per-row states: no slots)
    keep = jnp.arange(cache.capacity) < cache.capacity - d
    return cache.replace(keys=tuple(map(roll, cache.keys)), values=tuple(map(roll, cache.values)),
                         valid=jnp.roll(cache.valid, -d, axis=1) & keep[None, :], index=cache.index - d)

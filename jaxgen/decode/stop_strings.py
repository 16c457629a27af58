"""In-loop stop strings: transformers' ``StopStringCriteria`` check as pure array operations.

The tokenizer-dependent part is done once on the host (:mod:`jaxgen.text.stop_strings` builds a
:class:`StopTable` from the vocabulary); here, after each new token, the last ``window`` tokens of a row are
matched backwards against every stop string exactly as transformers does: the newest token must overlap the end
of a stop string (``ends``), each earlier token must fit at the position reached so far (``positions``), and the
string is found once the matched length reaches its length (``targets``). A stop string must end inside the
newest token, so it is found at the step that completes it and never again.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct
from jax import Array


@struct.dataclass
class StopTable:
    """Per-token match data (row ``Vt - 1`` is a dummy that matches nothing: padding and tokens the tokenizer
    does not know). ``positions`` i32 ``[Vt, S, P]``, ``ends`` i32 ``[Vt, S, E]`` (-1 = none), ``lengths``
    i32 ``[Vt]`` (characters or bytes of each token), ``targets`` i32 ``[S]`` (each stop string's length; int32
    max for padding strings), ``window`` i32 ``[]``: how many tokens back the check reads (transformers'
    ``maximum_token_len``)."""

    positions: Array
    ends: Array
    lengths: Array
    targets: Array
    window: Array


def stop_hit(table: StopTable, ids: Array, valid: Array) -> Array:
    """``bool[B]``: does a stop string end in the newest of ``ids[B, W]`` (oldest first; ``valid`` marks real
    tokens)? transformers' ``StopStringCriteria.__call__``, with padding and positions past ``window`` read as
    the dummy token."""
    dummy = table.lengths.shape[0] - 1
    flipped, real = ids[:, ::-1], valid[:, ::-1]  # newest first
    real = real & (jnp.arange(ids.shape[1]) < table.window)[None, :]
    flipped = jnp.where(real, jnp.clip(flipped, 0, dummy), dummy)
    end_lengths = table.ends[flipped[:, :1]]  # [B, 1, S, E]
    positions = table.positions[flipped[:, 1:]]  # [B, W-1, S, P]
    lengths = jnp.broadcast_to(table.lengths[flipped[:, 1:]][:, :, None, None],
                               (ids.shape[0], ids.shape[1] - 1) + end_lengths.shape[2:])
    cumsum = jnp.cumsum(jnp.concatenate([end_lengths, lengths], axis=1), axis=1)  # [B, W, S, E]
    initial = end_lengths > 0
    later = jnp.any(cumsum[:, :-1, :, None, :] == positions[:, :, :, :, None], axis=-2)  # [B, W-1, S, E]
    match = jnp.concatenate([initial, later], axis=1)
    unbroken = jnp.cumsum(~match, axis=1) == 0
    found = jnp.max(cumsum * unbroken, axis=(1, 3)) >= table.targets[None, :]  # [B, S]
    return jnp.any(found, axis=-1)

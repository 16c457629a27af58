"""``GenerationOutput``: what ``jaxgen.api.generate`` returns (a frozen pytree of fixed-shape arrays)."""

from __future__ import annotations

from typing import Any

from flax import struct
from jax import Array


@struct.dataclass
class GenerationOutput:
    """Results of one ``generate`` call; R = ``num_return_sequences``, N = ``max_new_tokens``, k = ``top_logprobs``.

    - ``sequences`` int32 ``[B*R, T + N]``: the left-padded prompt then the new tokens, ``pad_token_id`` after a
      row finished (transformers' layout). Rows of one prompt are adjacent.
    - ``token_logprobs`` float32 ``[B*R, N]``: logprob of each chosen token (per ``logprobs_mode``); 0 after the end.
    - ``top_token_ids`` int32 / ``top_logprobs`` float32 ``[B*R, N, k]``: most likely tokens first; -1 / 0 after
      the end.
    - ``sequences_scores`` float32 ``[B*R]``: beam search's length-normalised score (None otherwise).
    - ``num_generated`` int32 ``[B*R]``: new tokens per row, EOS included.
    - ``keys`` uint32 ``[B*R, 2]``: the per-row sampling key data (None for greedy/beam); passing them back as
      ``key=jax.random.wrap_key_data(keys)`` with ``num_return_sequences=1`` repeats each row's draw.
    """

    sequences: Array
    token_logprobs: Array
    top_token_ids: Array
    top_logprobs: Array
    num_generated: Array
    sequences_scores: Array | None = None
    keys: Array | None = None
    prompt_length: int = struct.field(pytree_node=False, default=0)
    config: Any = struct.field(pytree_node=False, default=None)

    @property
    def new_tokens(self) -> Array:
        """int32 ``[B*R, N]``: only the generated part of ``sequences``."""
        return self.sequences[:, self.prompt_length:]

"""Host side of streaming: the compiled loop hands its token buffer to :func:`deliver` every few steps.

The loop is given ``deliver`` explicitly (``decode(..., emit=deliver)``) together with a traced call id; each
streaming call registers its own callback under a fresh id for its duration (:func:`open_stream`), so concurrent
streaming calls never mix their output and the compiled program never depends on which callback is active.
A callback ``fn(tokens, num_steps, done)`` receives numpy ``int32[B, N]`` (valid up to ``num_steps``), the step
count, and ``bool[B]`` rows finished; the final chunk also arrives when the loop ends at ``max_new_tokens``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Callable, Iterator

import numpy as np

Streamer = Callable[[np.ndarray, int, np.ndarray], None]

_streams: dict[int, Streamer] = {}
_ids = itertools.count(1)
_lock = threading.Lock()


def deliver(call_id, tokens, step, done) -> None:
    """Called from the XLA runtime thread: route one chunk to the callback registered under ``call_id``."""
    fn = _streams.get(int(call_id))
    if fn is not None:
        fn(np.asarray(tokens), int(step), np.asarray(done))


@contextlib.contextmanager
def open_stream(fn: Streamer | None) -> Iterator[int]:
    """Register ``fn`` for one call; yields the id to pass into the program (0 = no streaming)."""
    if fn is None:
        yield 0
        return
    with _lock:
        call_id = next(_ids) % 2**31
        _streams[call_id] = fn
    try:
        yield call_id
    finally:
        with _lock:
            _streams.pop(call_id, None)

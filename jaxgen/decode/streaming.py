"""Host side of streaming: the compiled loop calls :func:`deliver` with the token buffer every few steps.

``generate(..., streamer=fn)`` installs ``fn`` for the duration of the (blocking) call; ``fn(tokens, num_steps, done)``
receives numpy ``int32[B, N]`` (valid up to ``num_steps``), the step count, and ``bool[B]`` rows finished.
The final chunk is also delivered when the loop ends by reaching ``max_new_tokens``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import numpy as np

Streamer = Callable[[np.ndarray, int, np.ndarray], None]
# The callback runs on an XLA runtime thread, so the active streamer is process-global (one streaming call at a
# time; the lock makes concurrent streaming calls wait for each other instead of mixing their output).
_active: list[Streamer | None] = [None]
_lock = threading.Lock()


def deliver(tokens, step, done) -> None:
    fn = _active[0]
    if fn is not None:
        fn(np.asarray(tokens), int(step), np.asarray(done))


@contextlib.contextmanager
def streaming_to(fn: Streamer | None) -> Iterator[None]:
    with _lock:
        _active[0] = fn
        try:
            yield
        finally:
            _active[0] = None

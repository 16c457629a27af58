"""jaxgen's entry points run with ``jax_enable_x64`` off, whatever the caller's setting.

jaxgen's programs are written for JAX's default 32-bit types: cache indices, positions and token ids are int32,
and XLA ops such as ``dynamic_update_slice`` reject indices of mixed widths. Research code often turns x64 on
globally (``jax.config.update("jax_enable_x64", True)``); without this guard every call would then fail while
tracing, or trace a different program. Under the guard, a call gives the same tokens as with x64 off.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, TypeVar

import jax

F = TypeVar("F", bound=Callable[..., Any])


def x64_off(fn: F) -> F:
    """``fn`` traced and run with ``jax_enable_x64`` off (a thread-local setting, restored on return)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def iterate_x64_off(items: Iterator[Any]) -> Iterator[Any]:
    """``items`` (a generator) advanced with ``jax_enable_x64`` off at every step, since its body runs on
    each ``next`` and not when it was created."""
    while True:
        with jax.enable_x64(False):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item

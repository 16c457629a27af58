"""Streaming safetensors writer shared by conversion (jaxgen layout) and export (Hugging Face layout).

The header is built from declared names, dtypes and shapes, so tensors can be produced and written one at a
time: writing a model needs memory for one tensor, not the model.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from checkpoints_convert.reader import DTYPE_TAGS

Spec = tuple[str, np.dtype, tuple[int, ...]]  # (name, dtype, shape)


def write_safetensors(path: str, specs: Sequence[Spec], arrays: Iterable[np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``arrays`` (one per spec, in ``specs`` order) to ``path`` as one safetensors file, then fsync it.

    Each array must have exactly its spec's dtype and shape: the header was written from the specs before it.
    """
    header: dict[str, dict] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": DTYPE_TAGS[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so tensor data starts 8-byte aligned, as the safetensors library does
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for (name, dtype, shape), x in zip(specs, arrays, strict=True):
            # A mismatch would silently corrupt every later offset: refuse it before writing the bytes.
            assert x.shape == tuple(shape) and x.dtype == np.dtype(dtype), (name, x.shape, x.dtype, shape, dtype)
            f.write(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: str) -> None:
    """Make a folder's entries (a rename, new files) durable, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is then as durable as they allow
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

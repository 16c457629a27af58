"""``load_model``: a converted jaxgen folder or a Hugging Face folder -> :class:`jaxgen.model.Model`."""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp

from jaxgen.errors import CheckpointError
from jaxgen.model import Model, model_from_arrays

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "demo", "model")


def _dtype(value: Any, field: str) -> jnp.dtype:
    if value is None:
        return None
    name = value if isinstance(value, str) else jnp.dtype(value).name
    if name not in DTYPES:
        raise ValueError(f"{field}={value!r} is not supported; use one of {sorted(DTYPES)}.")
    return jnp.dtype(DTYPES[name])


def load_model(path: str | os.PathLike | None = None, dtype: Any = "float32", param_dtype: Any = None,
               mesh: Any = None) -> Model:
    """Load a model for generation.

    ``path``: a folder written by ``jaxgen convert``, or a Hugging Face checkpoint folder (``config.json`` +
    safetensors, sharded or not, or ``pytorch_model.bin``; converted in memory). None = the bundled demo model.
    ``dtype``: compute dtype ("float32", "bfloat16", "float16"); ``param_dtype``: storage dtype (default = dtype).
    ``mesh``: a ``jax.sharding.Mesh`` with axes ("data", "model") (:func:`jaxgen.parallel.sharding.make_mesh`): parameters
    are split for tensor parallelism and ``generate`` splits the batch; from a converted folder each device reads
    only its own slices of the files.
    """
    from checkpoints_convert import is_converted, load_hf_params, read_converted

    path = BUNDLED_MODEL if path is None else os.fspath(path)
    if not os.path.isdir(path):
        hint = (" The bundled model is missing from this install; reinstall jaxgen." if path == BUNDLED_MODEL
                else "")
        raise CheckpointError(f"{path}: not a folder. Pass a Hugging Face checkpoint folder or one written by "
                              f"`jaxgen convert`.{hint}")
    compute = _dtype(dtype, "dtype")
    storage = _dtype(param_dtype, "param_dtype") or compute
    if is_converted(path):
        config, arrays = read_converted(path, lazy=True)
    else:
        config, arrays = load_hf_params(path, dtype=storage.name)
    gen_file = os.path.join(path, "generation_config.json")
    generation_config = None
    if os.path.isfile(gen_file):
        try:
            with open(gen_file) as f:
                generation_config = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{gen_file}: not valid JSON ({e}); fix or delete it.") from e
    return model_from_arrays(config, arrays, dtype=compute, param_dtype=storage, source=path, path=path,
                             generation_config=generation_config, mesh=mesh)

"""``load_model``: a converted jaxgen folder, a Hugging Face folder, or a Hub id already in the local Hugging Face
cache -> :class:`jaxgen.model.Model`."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from jaxgen.errors import CheckpointError, read_json_object
from jaxgen.model import Model, model_from_arrays
from jaxgen.x64 import x64_off

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "demo", "model")


def _dtype(value: Any, field: str) -> jnp.dtype:
    if value is None:
        return None
    name = value if isinstance(value, str) else jnp.dtype(value).name
    if name not in DTYPES:
        raise ValueError(f"{field}={value!r} is not supported; use one of {sorted(DTYPES)}.")
    return jnp.dtype(DTYPES[name])


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder, read from the environment now.

    ``huggingface_hub.constants`` reads HF_HUB_CACHE / HF_HOME once, at import; reading them here means a
    variable set later (a test's monkeypatch, a notebook's ``os.environ``) still counts. Same precedence as
    huggingface_hub: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub.
    """
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def _from_hub_cache(repo_id: str) -> str | None:
    """The cached snapshot folder of ``repo_id`` (revision main), or None. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True, cache_dir=hub_cache_dir())
    except LocalEntryNotFoundError:  # not cached, or cached but incomplete (IncompleteSnapshotError)
        return None


def _looks_like_repo_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_model_path(name: str | os.PathLike | None = None) -> str:
    """The checkpoint folder ``name`` stands for: an existing folder as given (it always wins over a Hub id), a
    Hub id (``org/name``) as its snapshot folder in the local Hugging Face cache, None as the bundled model.

    Nothing is downloaded. Raises :class:`CheckpointError` saying what to do otherwise.
    """
    path = BUNDLED_MODEL if name is None else os.fspath(name)
    if os.path.isdir(path):
        return path
    if path == BUNDLED_MODEL:
        raise CheckpointError(f"{path}: the bundled demo model is missing from this install; reinstall jaxgen.")
    if os.path.isfile(path):
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds it "
                              f"({os.path.dirname(os.path.abspath(path))}).")
    if _looks_like_repo_id(path):
        snapshot = _from_hub_cache(path)
        if snapshot is not None:
            return snapshot
        raise CheckpointError(
            f"{path}: no such folder exists, and no complete copy of the Hub model {path!r} in the local Hugging Face "
            f"cache ({hub_cache_dir()}; set by HF_HUB_CACHE or HF_HOME). jaxgen never downloads. On a machine "
            f"with internet access run `hf download {path}` (older huggingface_hub: `huggingface-cli download "
            f"{path}`), then copy its cache folder models--{path.replace('/', '--')} into this cache, or download "
            f"with `--local-dir DIR` and pass that folder.")
    raise CheckpointError(f"{path} does not exist. Pass a Hugging Face checkpoint folder, one written by "
                          "`jaxgen convert`, or a Hub id (org/name) already in the local Hugging Face cache.")


def _generation_config(path: str) -> dict[str, Any] | None:
    """The folder's ``generation_config.json`` as a dict, or None when there is none."""
    gen_file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(gen_file):
        return None
    return read_json_object(gen_file, CheckpointError, 'generation settings ({"max_new_tokens": ..., ...})')


@x64_off
def load_model(path: str | os.PathLike | None = None, dtype: Any = "float32", param_dtype: Any = None,
               mesh: Any = None) -> Model:
    """Load a model for generation.

    ``path``: a folder written by ``jaxgen convert``, or a Hugging Face checkpoint folder (``config.json`` +
    safetensors, sharded or not, or ``pytorch_model.bin``; converted in memory), or a Hub id (``org/name``) already
    in the local Hugging Face cache (:func:`resolve_model_path`; never downloaded). None = the bundled demo model.
    ``Model.path`` is the resolved folder (load the tokenizer from there).
    ``dtype``: compute dtype ("float32", "bfloat16", "float16"); ``param_dtype``: storage dtype (default = dtype).
    ``mesh``: a ``jax.sharding.Mesh`` with axes ("data", "model") (:func:`jaxgen.parallel.sharding.make_mesh`): parameters
    are split for tensor parallelism and ``generate`` splits the batch; from a converted folder each device reads
    only its own slices of the files.
    """
    from checkpoints_convert import is_converted, load_hf_params, read_converted

    path = resolve_model_path(path)
    compute = _dtype(dtype, "dtype")
    storage = _dtype(param_dtype, "param_dtype") or compute
    if is_converted(path):
        config, arrays = read_converted(path, lazy=True)
    else:
        config, arrays = load_hf_params(path, dtype=storage.name)
    generation_config = _generation_config(path)
    return model_from_arrays(config, arrays, dtype=compute, param_dtype=storage, source=path, path=path,
                             generation_config=generation_config, mesh=mesh)

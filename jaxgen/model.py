"""A loaded model: config, NNX graph definition, parameter pytree, and the pure step function built from them."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from jaxgen.cache import KVCache, init_cache
from jaxgen.config import ModelConfig
from jaxgen.errors import CheckpointError
from jaxgen.nn.transformer import CausalLM
from jaxgen.x64 import x64_off

StepFn = Callable[..., tuple[Array, KVCache]]


def abstract_model(config: ModelConfig, dtype: Any = jnp.float32, param_dtype: Any = None) -> CausalLM:
    """The model with ``jax.ShapeDtypeStruct`` leaves: shapes of every parameter, nothing allocated."""
    param_dtype = dtype if param_dtype is None else param_dtype
    return nnx.eval_shape(lambda: CausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


@functools.lru_cache(maxsize=16)
def abstract_split(config: ModelConfig, dtype: Any = jnp.float32, param_dtype: Any = None):
    """``(graphdef, abstract state)`` of the model, cached per config: tracing the module once is enough."""
    return nnx.split(abstract_model(config, dtype, param_dtype))


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's dotted name (``model.layers.0.self_attn.q_proj.kernel``) and shape."""
    _, state = abstract_split(config)
    return {".".join(map(str, path)): tuple(v.shape) for path, v in nnx.to_flat_state(state)}


def make_step(graphdef: nnx.GraphDef) -> StepFn:
    """``step(params, tokens[B,T], positions[B,T], cache, mask[B,T], logits_positions=None, images=None)
    -> (logits, cache)`` (``images``: a multimodal prompt's :class:`~jaxgen.nn.vision.ImageInputs`).

    Pure: merges the graph with ``params`` inside, so callers jit it with params as an argument.
    """

    @x64_off
    def step(params, tokens, positions, cache, mask, logits_positions=None, images=None):
        # int32 by contract; a caller under jax_enable_x64 may hand int64 arrays.
        tokens, positions, mask = (jnp.asarray(x, jnp.int32) for x in (tokens, positions, mask))
        if logits_positions is not None:
            logits_positions = jnp.asarray(logits_positions, jnp.int32)
        return nnx.merge(graphdef, params)(tokens, positions, cache, mask, logits_positions, images)

    return step


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """What ``jaxgen.load_model`` returns.

    ``params`` is an ``nnx.State`` pytree (the jit argument); ``step`` is the pure forward function;
    ``generation_config`` holds the checkpoint's ``generation_config.json`` dict (or None); ``path`` the folder.
    """

    config: ModelConfig
    graphdef: nnx.GraphDef
    params: Any
    dtype: jnp.dtype
    path: str | None = None
    generation_config: Mapping[str, Any] | None = None
    mesh: Any = None

    @property
    def step(self) -> StepFn:
        return make_step(self.graphdef)

    @x64_off
    def init_cache(self, batch_size: int, capacity: int) -> KVCache:
        return init_cache(self.config, batch_size, capacity, self.dtype)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.params))


def _place(array: Any, dtype: jnp.dtype, sharding: Any) -> Array:
    """One parameter on device(s). With a sharding, each device reads only its own slice of ``array`` (which may
    be a file-backed ``np.memmap``), so no full copy is ever made on one device or in host memory."""
    if sharding is None:
        return jnp.asarray(array, dtype=dtype)
    return jax.make_array_from_callback(tuple(array.shape), sharding,
                                        lambda index: np.asarray(array[index]).astype(dtype))


def model_from_arrays(config: ModelConfig, arrays: Mapping[str, Any], dtype: Any = jnp.float32,
                      param_dtype: Any = None, source: str = "checkpoint", mesh: Any = None, **kwargs) -> Model:
    """Build a :class:`Model` from ``{dotted name: array}`` in jaxgen's layout, checking names and shapes.

    With a ``mesh`` (see :mod:`jaxgen.parallel.sharding`), parameters are placed sharded for tensor parallelism.
    """
    dtype = jnp.dtype(dtype)
    param_dtype = dtype if param_dtype is None else jnp.dtype(param_dtype)
    graphdef, state = abstract_split(config, dtype, param_dtype)
    flat = dict(nnx.to_flat_state(state))
    expected = {".".join(map(str, p)): p for p in flat}
    missing = sorted(set(expected) - set(arrays))
    unused = sorted(set(arrays) - set(expected))
    if missing or unused:
        raise CheckpointError(f"{source}: parameters do not match the config: missing {missing[:8]}"
                              f"{'…' if len(missing) > 8 else ''}, unused {unused[:8]}"
                              f"{'…' if len(unused) > 8 else ''}. Re-convert the checkpoint with `jaxgen convert`.")
    shardings = {}
    if mesh is not None:
        from jaxgen.parallel.sharding import param_shardings

        shardings = param_shardings(config, mesh, {n: flat[p].shape for n, p in expected.items()})
    for name, path in expected.items():
        want = flat[path].shape
        got = tuple(arrays[name].shape)
        if got != tuple(want):
            raise CheckpointError(f"{source}: parameter {name} has shape {got}, the config implies {tuple(want)}.")
        flat[path] = flat[path].replace(_place(arrays[name], param_dtype, shardings.get(name)))
    params = nnx.from_flat_state(flat)
    return Model(config=config, graphdef=graphdef, params=params, dtype=dtype, mesh=mesh, **kwargs)

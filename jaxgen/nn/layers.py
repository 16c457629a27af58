"""Small building blocks with transformers' parameter names: RMSNorm and the gated MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array


class RMSNorm(nnx.Module):
    """RMS normalisation computed in float32, cast back, then scaled by ``weight`` (as transformers' LlamaRMSNorm)."""

    def __init__(self, size: int, eps: float, *, param_dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * h.astype(x.dtype)


def linear(n_in: int, n_out: int, bias: bool, dtype: jnp.dtype, param_dtype: jnp.dtype, precision,
           rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer with kernel ``[n_in, n_out]`` (transformers' ``weight`` transposed)."""
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class MLP(nnx.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, *, dtype, param_dtype, precision, rngs):
        self.gate_proj = linear(hidden, intermediate, bias, dtype, param_dtype, precision, rngs)
        self.up_proj = linear(hidden, intermediate, bias, dtype, param_dtype, precision, rngs)
        self.down_proj = linear(intermediate, hidden, bias, dtype, param_dtype, precision, rngs)

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))

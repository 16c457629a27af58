"""Small building blocks with transformers' parameter names: the three norms, dense layers and the MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import LayerSpec, NormSpec


def parity_precision(dtype) -> jax.lax.Precision:
    """Matmul precision for a model computing in ``dtype``: float32 is "parity mode", full precision even where the
    backend would default to TF32 / bfloat16 passes (GPU, TPU); other dtypes take the backend's default."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


class RMSNorm(nnx.Module):
    """RMS normalisation computed in float32, cast back, then scaled by ``weight`` (as transformers' LlamaRMSNorm)."""

    def __init__(self, size: int, eps: float, *, param_dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * h.astype(x.dtype)


class GemmaRMSNorm(nnx.Module):
    """Gemma's RMSNorm: ``(1 + weight) * normalize(x)``, all in float32, cast at the end.

    The weight is stored zero-centred (a checkpoint's zeros mean "scale 1"), and the scaling happens before the cast
    (Llama casts first): in bfloat16 the two orders differ, see transformers PR #29402.
    """

    def __init__(self, size: int, eps: float, *, param_dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.zeros((size,), param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return (h * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


class F32RMSNorm(nnx.Module):
    """Gemma 4's RMSNorm: ``weight * normalize(x)``, all in float32, cast at the end (weight stored as is)."""

    def __init__(self, size: int, eps: float, *, param_dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        return (rms_normalize(x, self.eps) * self.weight[...].astype(jnp.float32)).astype(x.dtype)


def rms_normalize(x: Array, eps: float) -> Array:
    """``x / sqrt(mean(x^2) + eps)`` over the last axis, in float32 (no scale: Gemma 4's v-norm)."""
    h = x.astype(jnp.float32)
    return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)


class LayerNorm(nnx.Module):
    """LayerNorm with ``weight`` and ``bias`` (GPT-2), computed in float32 as torch does for reduced precision."""

    def __init__(self, size: int, eps: float, *, param_dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((size,), param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)  # biased, as torch
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


_NORMS = {"rms": RMSNorm, "gemma_rms": GemmaRMSNorm, "layer": LayerNorm, "rms_f32": F32RMSNorm}


def norm(spec: NormSpec, size: int, param_dtype: jnp.dtype) -> nnx.Module:
    """The norm ``spec`` names, over the last dimension of size ``size``."""
    return _NORMS[spec.kind](size, spec.eps, param_dtype=param_dtype)


def linear(n_in: int, n_out: int, bias: bool, dtype: jnp.dtype, param_dtype: jnp.dtype, precision,
           rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer with kernel ``[n_in, n_out]`` (transformers' ``weight`` transposed)."""
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                      kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


# transformers' ACT2FN names -> the canonical names the config keeps. gelu_new and gelu_pytorch_tanh are the same
# tanh approximation (transformers computes them in different op orders; the difference is float32 rounding).
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class MLP(nnx.Module):
    """Feed-forward of one layer. ``gated``: ``down(act(gate(x)) * up(x))`` (SwiGLU / GeGLU); ``plain``:
    ``down(act(up(x)))`` (GPT-2's ``c_fc`` -> ``up_proj``, ``c_proj`` -> ``down_proj``)."""

    def __init__(self, hidden: int, intermediate: int, spec: LayerSpec, *, dtype, param_dtype, precision, rngs):
        bias = spec.mlp_bias
        self.gated = spec.mlp in ("gated", "dense+moe")  # dense+moe: Gemma 4's dense half is gated
        if self.gated:
            self.gate_proj = linear(hidden, intermediate, bias, dtype, param_dtype, precision, rngs)
        self.up_proj = linear(hidden, intermediate, bias, dtype, param_dtype, precision, rngs)
        self.down_proj = linear(intermediate, hidden, bias, dtype, param_dtype, precision, rngs)
        self.activation = spec.activation

    def __call__(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        if self.gated:
            return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(act(self.up_proj(x)))

"""SigLIP-style vision encoder layers with transformers' names (``SiglipEncoderLayer`` and the towers built on it:
Gemma 3's ``SiglipVisionModel``, MiniCPM-V 4.6's NaViT-packed tower).

Non-causal attention over an image's patches; ``segments`` restricts it to equal ids, which serves both packed
sequences of several images (MiniCPM-V) and window attention (its 2x2 window merger) without ragged shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax import Array

from jaxgen.config import NormSpec, VisionConfig
from jaxgen.nn.layers import ACTIVATIONS, linear, norm


@struct.dataclass
class ImageInputs:
    """What a prompt's images add to its prefill (built host-side by :mod:`jaxgen.api.images`).

    ``pixel_values``: the processor's, as it returns them; ``slots`` int32 ``[B, T]``: the row of the image
    features each prompt position takes (-1: a text token keeps its embedding); ``blocks`` int32 ``[B, T]`` or
    None: Gemma 3's bidirectional blocks (the tokens of one image attend to each other; -1 elsewhere);
    ``target_sizes``: static, MiniCPM-V's ``(h, w)`` patch grid per image slice.
    """

    pixel_values: Array
    slots: Array
    blocks: Array | None = None
    target_sizes: tuple = struct.field(pytree_node=False, default=())


def patchify(pixels: Array, patch: int) -> Array:
    """Non-overlapping ``patch x patch`` patches of ``pixels[N, C, H, W]`` in row-major order, each flattened as
    ``(C, p, p)``: ``[N, (H/p) * (W/p), C * p * p]``. With a kernel from a ``Conv2d(kernel=stride=p)`` weight
    ``[D, C, p, p]`` reshaped to ``[D, C*p*p]`` and transposed, a dense layer on this is that convolution."""
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def layer_norm(size: int, eps: float, param_dtype) -> nnx.Module:
    return norm(NormSpec("layer", eps), size, param_dtype)


class VisionAttention(nnx.Module):
    """Multi-head attention with biases (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), every patch attending
    to every patch of its segment."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        d = c.hidden_size
        self.num_heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            linear(d, d, True, dtype, param_dtype, precision, rngs) for _ in range(4))
        self.precision = precision

    def __call__(self, x: Array, segments: Array | None = None) -> Array:
        """x ``[N, L, D]``; ``segments`` int32 ``[N, L]`` (None: one segment) -> ``[N, L, D]``."""
        n, l, _ = x.shape
        # Head-major [N, H, L, D] before both products: on XLA:CPU this halves the layer's attention time against
        # contracting in the [N, L, H, D] layout the projections produce.
        heads = lambda y: y.reshape(n, l, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = jnp.einsum("nhqd,nhkd->nhqk", q, k, precision=self.precision,
                            preferred_element_type=jnp.float32) * self.head_dim ** -0.5
        if segments is not None:
            same = segments[:, None, :, None] == segments[:, None, None, :]
            scores = jnp.where(same, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("nhqk,nhkd->nhqd", probs, v, precision=self.precision)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(n, l, -1))


class VisionMLP(nnx.Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.fc1 = linear(c.hidden_size, c.intermediate_size, True, dtype, param_dtype, precision, rngs)
        self.fc2 = linear(c.intermediate_size, c.hidden_size, True, dtype, param_dtype, precision, rngs)
        self.activation = c.activation

    def __call__(self, x: Array) -> Array:
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


class VisionEncoderLayer(nnx.Module):
    """Pre-norm: ``x + self_attn(layer_norm1(x))``, then ``x + mlp(layer_norm2(x))``."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.layer_norm1 = layer_norm(c.hidden_size, c.layer_norm_eps, param_dtype)
        self.self_attn = VisionAttention(c, **kw)
        self.layer_norm2 = layer_norm(c.hidden_size, c.layer_norm_eps, param_dtype)
        self.mlp = VisionMLP(c, **kw)

    def __call__(self, x: Array, segments: Array | None = None) -> Array:
        x = x + self.self_attn(self.layer_norm1(x), segments)
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nnx.Module):
    """``patch_embedding`` (the patch convolution as a dense layer on :func:`patchify`'s patches) and the learned
    ``position_embedding`` of the ``patches_per_side**2`` patch grid."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        p = c.patch_size
        self.patch_embedding = linear(c.num_channels * p * p, c.hidden_size, True, dtype, param_dtype, precision,
                                      rngs)
        self.position_embedding = nnx.Embed(c.patches_per_side ** 2, c.hidden_size, dtype=dtype,
                                            param_dtype=param_dtype, rngs=rngs)
        self.patch = p

    def __call__(self, pixels: Array, position_ids: Array | None = None) -> Array:
        """pixels ``[N, C, H, W]`` -> ``[N, patches, D]``; ``position_ids`` ``[N or 1, patches]`` (None: 0, 1, ...)."""
        x = self.patch_embedding(patchify(pixels.astype(self.patch_embedding.kernel.dtype), self.patch))
        if position_ids is None:
            position_ids = jnp.arange(x.shape[1])[None]
        return x + self.position_embedding(position_ids)

"""Gemma 3's image encoder: the SigLIP vision tower and the multimodal projector, with transformers' names
(``vision_tower.*`` as transformers 5 saves it; 4.x's ``vision_tower.vision_model.*`` is renamed at conversion,
``multi_modal_projector.*``)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jax import Array

from jaxgen.config import VisionConfig
from jaxgen.nn.layers import GemmaRMSNorm
from jaxgen.nn.vision import VisionEmbeddings, VisionEncoderLayer, layer_norm


class _Encoder(nnx.Module):
    def __init__(self, c: VisionConfig, **kw):
        self.layers = nnx.List([VisionEncoderLayer(c, **kw) for _ in range(c.num_hidden_layers)])


class SiglipVisionModel(nnx.Module):
    """SigLIP's vision model: patch + position embeddings, the encoder layers, ``post_layernorm``."""

    def __init__(self, c: VisionConfig, **kw):
        self.embeddings = VisionEmbeddings(c, **kw)
        self.encoder = _Encoder(c, **kw)
        self.post_layernorm = layer_norm(c.hidden_size, c.layer_norm_eps, kw["param_dtype"])

    def __call__(self, pixels: Array) -> Array:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class Gemma3MultiModalProjector(nnx.Module):
    """Average-pools the patch grid to ``mm_tokens_per_image`` tokens, applies Gemma's ``(1 + w)`` RMSNorm and
    projects to the language model's width with ``mm_input_projection_weight[vision_hidden, text_hidden]``."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.mm_input_projection_weight = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (c.hidden_size, c.text_hidden_size), param_dtype))
        self.mm_soft_emb_norm = GemmaRMSNorm(c.hidden_size, c.layer_norm_eps, param_dtype=param_dtype)
        self.side = c.patches_per_side
        self.tokens_side = int(round(c.mm_tokens_per_image ** 0.5))
        self.precision = precision

    def __call__(self, x: Array) -> Array:
        """x ``[N, patches, vision_hidden]`` -> ``[N, mm_tokens_per_image, text_hidden]``."""
        n, _, d = x.shape
        k = self.side // self.tokens_side
        grid = x.reshape(n, self.tokens_side, k, self.tokens_side, k, d)
        pooled = grid.astype(jnp.float32).mean(axis=(2, 4)).astype(x.dtype).reshape(n, -1, d)
        normed = self.mm_soft_emb_norm(pooled)
        w = self.mm_input_projection_weight[...].astype(x.dtype)
        return jnp.einsum("ntd,de->nte", normed, w, precision=self.precision)


class Gemma3ImageEncoder(nnx.Module):
    """``pixel_values[N, C, S, S]`` (the Gemma 3 image processor's output) -> image features
    ``[N * mm_tokens_per_image, text_hidden]`` in image order, one row per image placeholder token."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        if c.patches_per_side % int(round(c.mm_tokens_per_image ** 0.5)):
            raise ValueError(f"mm_tokens_per_image={c.mm_tokens_per_image} does not tile a {c.patches_per_side}^2 "
                             "patch grid.")
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.vision_tower = SiglipVisionModel(c, **kw)
        self.multi_modal_projector = Gemma3MultiModalProjector(c, **kw)

    def __call__(self, pixel_values: Array, target_sizes: tuple = ()) -> Array:
        feats = self.multi_modal_projector(self.vision_tower(pixel_values))
        return feats.reshape(-1, feats.shape[-1])

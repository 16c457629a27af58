"""MiniCPM-V 4.6's image encoder: the NaViT-packed SigLIP-style vision tower with its 2x2 window-attention merger,
then the 2x2 downsampling MLP merger into the language model's width (transformers' ``MiniCPMV4_6Model.
get_image_features``, the image features concatenated over all image slices).

Inputs are the processor's: ``pixel_values [1, C, p, T * p]`` holds every slice's ``p x p`` patches side by side
(each slice's row-major patch grid, slices one after another, all images of a batch of prompts in one row), and
``target_sizes`` the ``(h, w)`` patch grid of each slice (an image is its resized source, then its slices). Those
sizes are static here: everything index-like (nearest position ids, window order, merge order, attention
segments) is numpy computed from them, a constant of the compiled program. Attribute paths mirror transformers'
state-dict names below ``model.`` (``vision_tower.*``, ``merger.*``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from jaxgen.config import VisionConfig
from jaxgen.nn.layers import ACTIVATIONS, linear, parity_precision
from jaxgen.nn.vision import VisionAttention, VisionEmbeddings, VisionEncoderLayer, layer_norm

Sizes = tuple[tuple[int, int], ...]

MERGE_EPS = 1e-6  # transformers' DownsampleMLP.pre_norm hard-codes eps=1e-6 (not the vision config's)


# ---- static index helpers (numpy, from the static patch grids) ---------------------------------------------------
def static_sizes(target_sizes) -> Sizes:
    """``target_sizes`` (a sequence of ``(h, w)``, a numpy or torch ``[S, 2]`` array) as a hashable tuple."""
    return tuple((int(h), int(w)) for h, w in np.asarray(target_sizes).reshape(-1, 2).tolist())


def _position_boundaries(side: int) -> np.ndarray:
    """transformers' ``torch.arange(1 / side, 1.0, 1 / side)`` (float32) value for value, as torch's CPU kernel
    computes it: element ``i`` is ``start + i * step`` in double, except that full blocks of 16 go as two vectors
    of 8 whose lanes are ``float32(start + j * step) + k * step``. The difference to a plain ``i / side`` decides
    ties (a patch coordinate exactly on a boundary: ``i / h == k / side``) for some table sizes."""
    step = 1.0 / side
    count = max(0, math.ceil((1.0 - step) / step))
    out = (step + np.arange(count) * step).astype(np.float32)
    for j in range(0, count - count % 16, 8):
        out[j:j + 8] = (np.float64(np.float32(step + j * step)) + np.arange(8) * step).astype(np.float32)
    return out


def nearest_position_ids(sizes: Sizes, side: int) -> np.ndarray:
    """Position-table rows ``[sum(h * w)]`` of every slice's patches: patch ``(i, j)`` of an ``h x w`` grid takes
    the ``side x side`` table's nearest-bucket row ``bucket(i / h) * side + bucket(j / w)`` (transformers'
    ``get_vision_nearest_position_ids``), so any grid reuses the learned square table."""
    bounds = _position_boundaries(side)

    def bucket(n: int) -> np.ndarray:
        return np.searchsorted(bounds, np.arange(n, dtype=np.float32) / np.float32(n), side="right")

    return np.concatenate([(bucket(h)[:, None] * side + bucket(w)[None, :]).reshape(-1) for h, w in sizes])


def block_index(sizes: Sizes, kernel: tuple[int, int]) -> np.ndarray:
    """``[sum(h * w) / (kh * kw), kh * kw]``: for each ``kh x kw`` block of each slice's row-major grid (blocks
    row-major, slices in order), the packed positions of its patches, row-major inside the block. Serves both the
    window merger (its window order; a window is one such block) and the downsampling merger (its 2x2 merge)."""
    kh, kw = kernel
    rows, offset = [], 0
    for h, w in sizes:
        grid = np.arange(h * w).reshape(h // kh, kh, w // kw, kw).transpose(0, 2, 1, 3)
        rows.append(grid.reshape(-1, kh * kw) + offset)
        offset += h * w
    return np.concatenate(rows)


def _shrink(sizes: Sizes, kernel: tuple[int, int]) -> Sizes:
    return tuple((h // kernel[0], w // kernel[1]) for h, w in sizes)


class _Layout:
    """How the packed tokens ``[T, D]`` of several slices meet the attention layers, chosen statically from the
    slice lengths: one row ``[1, T, D]`` with a slice id per token, or one row per slice ``[S, L_max, D]`` padded
    (padding in its own segment), whichever has fewer attention scores (``T**2`` vs ``S * L_max**2``): slices of
    one image share a length, so padding is usually cheaper than letting every slice mask out every other."""

    def __init__(self, sizes: Sizes):
        lengths = [h * w for h, w in sizes]
        total, longest = sum(lengths), max(lengths)
        self.padded = len(lengths) > 1 and len(lengths) * longest ** 2 < total ** 2
        if self.padded:
            starts = np.cumsum([0, *lengths[:-1]])
            valid = np.arange(longest)[None, :] < np.asarray(lengths)[:, None]  # [S, L_max]
            self.gather = np.where(valid, starts[:, None] + np.arange(longest)[None, :], 0)  # pads read token 0
            self.scatter = np.flatnonzero(valid)  # packed token -> row of the flattened [S * L_max]
            self.segments = None if valid.all() else jnp.asarray(valid.astype(np.int32))
        else:
            ids = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)[None]
            self.segments = jnp.asarray(ids) if len(lengths) > 1 else None

    def pack(self, x: Array) -> Array:
        """``[T, D]`` -> the attention layout."""
        return x[self.gather] if self.padded else x[None]

    def unpack(self, x: Array) -> Array:
        """The attention layout -> ``[T, D]``."""
        return x.reshape(-1, x.shape[-1])[self.scatter] if self.padded else x[0]


# ---- modules ----------------------------------------------------------------------------------------------------
class VisionEncoder(nnx.Module):
    """``layers``: the tower's :class:`VisionEncoderLayer` stack (run by :class:`MiniCPMVVisionTower`, which
    interleaves the window merger)."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.layers = nnx.List([VisionEncoderLayer(c, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                                   rngs=rngs) for _ in range(c.num_hidden_layers)])


class WindowAttentionMerger(nnx.Module):
    """transformers' ``ViTWindowAttentionMerger`` (``vision_tower.vit_merger``): attention inside each ``kh x kw``
    window of the (pre-normed) patches plus the residual, then per window ``linear_2(gelu_tanh(linear_1(
    pre_norm(concat))))`` plus the window's mean: one token per window, ``kh * kw`` times fewer."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        d, k = c.hidden_size, c.window_kernel_size[0] * c.window_kernel_size[1]
        self.self_attn = VisionAttention(c, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.layer_norm1 = layer_norm(d, c.layer_norm_eps, param_dtype)
        self.pre_norm = layer_norm(d * k, c.layer_norm_eps, param_dtype)
        self.linear_1 = linear(d * k, c.intermediate_size * k, True, dtype, param_dtype, precision, rngs)
        self.linear_2 = linear(c.intermediate_size * k, d, True, dtype, param_dtype, precision, rngs)

    def __call__(self, x: Array, windows: np.ndarray) -> Array:
        """x ``[T, D]`` packed; ``windows`` ``[W, kh * kw]`` (:func:`block_index`) -> ``[W, D]``."""
        # A window's patches attend only to each other: a batch of W windows of kh*kw tokens, no mask needed.
        h = x[windows] + self.self_attn(self.layer_norm1(x)[windows])  # [W, k, D]
        merged = self.linear_2(ACTIVATIONS["gelu_tanh"](self.linear_1(self.pre_norm(h.reshape(h.shape[0], -1)))))
        return merged + h.mean(axis=1)


class MiniCPMVVisionTower(nnx.Module):
    """transformers' ``MiniCPMV4_6VisionModel`` (``vision_tower``): patch + nearest-bucket position embeddings,
    the encoder layers over each slice's patches, the window merger after layer ``insert_layer_id`` (unless
    skipped: ``"4x"``), then ``post_layernorm``."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.embeddings = VisionEmbeddings(c, **kw)
        self.encoder = VisionEncoder(c, **kw)
        self.post_layernorm = layer_norm(c.hidden_size, c.layer_norm_eps, param_dtype)
        self.vit_merger = WindowAttentionMerger(c, **kw)
        self.insert_layer_id = c.insert_layer_id
        self.window = tuple(c.window_kernel_size)
        self.side = c.patches_per_side

    def __call__(self, pixel_values: Array, sizes: Sizes, use_merger: bool = True) -> Array:
        """pixel_values ``[1, C, p, T * p]``, ``sizes`` the static slice grids -> ``[T', D]`` (``T' = T / 4`` with
        the window merger)."""
        positions = jnp.asarray(nearest_position_ids(sizes, self.side))[None]
        # The packed row is a 1 x T grid of patches: patchify reads them in order.
        x = self.embeddings(pixel_values, positions)[0]
        layout = _Layout(sizes)
        h, segments = layout.pack(x), layout.segments
        for i, layer in enumerate(self.encoder.layers):
            h = layer(h, segments)
            if use_merger and i == self.insert_layer_id:
                x = self.vit_merger(layout.unpack(h), block_index(sizes, self.window))
                sizes = _shrink(sizes, self.window)
                layout = _Layout(sizes)  # the merged tokens: a quarter per slice, a new layout
                h, segments = layout.pack(x), layout.segments
        return self.post_layernorm(layout.unpack(h))


class DownsampleMLP(nnx.Module):
    """One 2x2 merge step: ``linear_2(gelu(linear_1(pre_norm(x))))`` on the concatenation of 4 tokens (exact erf
    GELU, as ``nn.GELU()``)."""

    def __init__(self, hidden: int, out: int, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        merged = 4 * hidden
        self.pre_norm = layer_norm(merged, MERGE_EPS, param_dtype)
        self.linear_1 = linear(merged, merged, True, dtype, param_dtype, precision, rngs)
        self.linear_2 = linear(merged, out, True, dtype, param_dtype, precision, rngs)

    def __call__(self, x: Array) -> Array:
        """x ``[M, 4 * hidden]`` -> ``[M, out]``."""
        return self.linear_2(ACTIVATIONS["gelu"](self.linear_1(self.pre_norm(x))))


class Merger(nnx.Module):
    """transformers' ``MiniCPMV4_6Merger`` (``merger``): ``merger_times`` 2x2 merges of each slice's grid, each a
    :class:`DownsampleMLP`; the last one projects to the language model's width."""

    def __init__(self, c: VisionConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        d = c.hidden_size
        self.mlp = nnx.List([DownsampleMLP(d, d if i < c.merger_times - 1 else c.text_hidden_size, dtype=dtype,
                                           param_dtype=param_dtype, precision=precision, rngs=rngs)
                             for i in range(c.merger_times)])
        self.kernel = tuple(c.merge_kernel_size)

    def __call__(self, x: Array, sizes: Sizes) -> Array:
        """x ``[T, D]`` packed over slices of grids ``sizes`` -> ``[T / 4**merger_times, text_hidden]``, slice by
        slice (transformers' ``torch.cat`` of the per-slice outputs)."""
        for mlp in self.mlp:
            blocks = block_index(sizes, self.kernel)  # [M, 4]
            x = mlp(x[blocks].reshape(blocks.shape[0], -1))
            sizes = _shrink(sizes, self.kernel)
        return x


class MiniCPMVImageEncoder(nnx.Module):
    """MiniCPM-V 4.6's image features: ``vision_tower`` then ``merger`` (transformers' ``get_image_features``, its
    ``pooler_output`` concatenated)."""

    def __init__(self, config: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, precision=None,
                 rngs: nnx.Rngs):
        _check_config(config)
        precision = parity_precision(dtype) if precision is None else precision
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.config = config
        self.vision_tower = MiniCPMVVisionTower(config, **kw)
        self.merger = Merger(config, **kw)

    def __call__(self, pixel_values: Array, target_sizes, downsample_mode: str | None = None) -> Array:
        """pixel_values ``[1, C, p, T * p]`` as the processor returns them; ``target_sizes`` the static ``(h, w)``
        patch grid of each slice (a tuple of pairs; under jit a static argument) -> ``[N, text_hidden_size]``,
        ``N = sum(h * w) / 16`` (``"16x"``) or ``/ 4`` (``"4x"``, the window merger skipped), in transformers'
        order. ``downsample_mode`` (None: the config's) as transformers' ``get_image_features`` argument."""
        c = self.config
        sizes = static_sizes(target_sizes)
        mode = downsample_mode or c.downsample_mode
        if mode not in ("16x", "4x"):
            raise ValueError(f"downsample_mode must be '16x' or '4x', got {mode!r}.")
        use_merger = mode != "4x"
        _check_inputs(c, pixel_values.shape, sizes, use_merger)
        x = self.vision_tower(pixel_values, sizes, use_merger)
        if use_merger:
            sizes = _shrink(sizes, c.window_kernel_size)
        return self.merger(x, sizes)


def _check_config(c: VisionConfig) -> None:
    if c.kind != "minicpmv4_6":
        raise ValueError(f"MiniCPMVImageEncoder needs a VisionConfig of kind 'minicpmv4_6', got {c.kind!r}.")
    # transformers hard-codes 2x2 in the places the kernel sizes do not reach (target_sizes // 2 after the window
    # merger, 4 * hidden in DownsampleMLP): other kernels are not a model it can run.
    if tuple(c.window_kernel_size) != (2, 2) or tuple(c.merge_kernel_size) != (2, 2):
        raise ValueError(f"MiniCPM-V needs 2x2 window and merge kernels, got {tuple(c.window_kernel_size)} and "
                         f"{tuple(c.merge_kernel_size)}.")
    if c.merger_times < 1:
        raise ValueError(f"merger_times must be >= 1, got {c.merger_times}.")
    if c.downsample_mode == "16x" and not 0 <= c.insert_layer_id < c.num_hidden_layers:
        raise ValueError(f"insert_layer_id={c.insert_layer_id} must name one of the {c.num_hidden_layers} vision "
                         "layers (the window merger runs after it).")


def _check_inputs(c: VisionConfig, shape: tuple[int, ...], sizes: Sizes, use_merger: bool) -> None:
    p = c.patch_size
    if not sizes:
        raise ValueError("target_sizes is empty: no image slice to encode.")
    if use_merger and not 0 <= c.insert_layer_id < c.num_hidden_layers:
        raise ValueError(f"insert_layer_id={c.insert_layer_id} names no vision layer: '16x' cannot merge windows.")
    total = sum(h * w for h, w in sizes)
    if len(shape) != 4 or shape[0] != 1 or shape[1:3] != (c.num_channels, p) or shape[3] != total * p:
        raise ValueError(f"pixel_values must be the processor's packed [1, {c.num_channels}, {p}, {total * p}] for "
                         f"target_sizes {list(sizes)}, got {list(shape)}.")
    factor = 2 ** (c.merger_times + use_merger)  # each 2x2 step halves both sides
    bad = [(h, w) for h, w in sizes if h <= 0 or w <= 0 or h % factor or w % factor]
    if bad:
        raise ValueError(f"patch grids {bad} are not divisible by {factor} ({'window merger, ' * use_merger}"
                         f"{c.merger_times} 2x2 merge(s)).")


def num_image_features(config: VisionConfig, target_sizes, downsample_mode: str | None = None) -> int:
    """Rows :class:`MiniCPMVImageEncoder` returns for these slices: ``sum(h * w) / 4**(merger_times + 1)`` with
    the window merger (``"16x"``), ``/ 4**merger_times`` without (``"4x"``). Plain Python."""
    steps = config.merger_times + ((downsample_mode or config.downsample_mode) != "4x")
    return sum(h * w for h, w in static_sizes(target_sizes)) // 4 ** steps

"""Host-side checks and layout of a multimodal prompt's images (what ``AutoProcessor`` returned), in numpy.

jaxgen does not preprocess images: the checkpoint's own processor resizes, slices and normalises them and writes
the image placeholders into the prompt. Here the placeholders are matched with the image features the encoder
will produce (same count, in transformers' order: row-major over the batch, as ``masked_scatter`` fills them),
before anything compiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxgen.config import ModelConfig, VisionConfig
from jaxgen.nn.minicpmv import num_image_features


@dataclasses.dataclass(frozen=True)
class HostImages:
    """Checked image inputs of ``B`` prompt rows of length ``T`` (see :class:`jaxgen.nn.vision.ImageInputs`)."""

    pixel_values: np.ndarray
    slots: np.ndarray  # int32 [B, T]: feature row per position, -1 for text
    blocks: np.ndarray | None  # int32 [B, T]: bidirectional block per position (Gemma 3), -1 elsewhere
    target_sizes: tuple[tuple[int, int], ...] = ()

    def rows(self, index: np.ndarray) -> "HostImages":
        """These inputs for prompt rows ``index`` (repeated rows share their features)."""
        return dataclasses.replace(self, slots=self.slots[index],
                                   blocks=None if self.blocks is None else self.blocks[index])

    def padded(self, rows: int, length: int) -> "HostImages":
        """Left-padded to ``[rows, length]`` (the shape bucket); extra rows copy row 0, as the prompt's do."""
        def pad(x):
            out = np.full((rows, length), -1, np.int32)
            out[:x.shape[0], length - x.shape[1]:] = x
            out[x.shape[0]:] = out[0]
            return out
        return dataclasses.replace(self, slots=pad(self.slots), blocks=None if self.blocks is None else pad(self.blocks))


def _int_pairs(target_sizes: Any, what: str) -> tuple[tuple[int, int], ...]:
    sizes = np.asarray(target_sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 2 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise ValueError(f"{what} must be positive integer (height, width) patch counts, shape [slices, 2]; got "
                         f"dtype {sizes.dtype} shape {sizes.shape}. Pass what the checkpoint's processor returns.")
    return tuple((int(h), int(w)) for h, w in sizes)


def _feature_count(v: VisionConfig, pixels: np.ndarray, sizes: tuple[tuple[int, int], ...]) -> int:
    """Rows of image features the encoder makes of these inputs, after checking their shapes."""
    s, c = v.image_size, v.num_channels
    if v.kind == "gemma3":
        if pixels.ndim != 4 or pixels.shape[1:] != (c, s, s):
            raise ValueError(f"pixel_values has shape {pixels.shape}; this Gemma 3 model reads images of shape "
                             f"[num_images, {c}, {s}, {s}], as its processor makes them.")
        return pixels.shape[0] * v.mm_tokens_per_image
    p = v.patch_size
    if not sizes:
        raise ValueError("MiniCPM-V inputs need target_sizes (the patch grid of every image slice) beside "
                         "pixel_values: pass everything the processor returned.")
    factor = 2 ** (v.merger_times + (v.downsample_mode != "4x"))  # every 2x2 merge halves both sides
    for h, w in sizes:
        if h % factor or w % factor:
            raise ValueError(f"target_sizes holds a slice of {h}x{w} patches, which MiniCPM-V's 2x2 merges "
                             f"({factor}x{factor} in all) do not tile; pass what the processor returned.")
    patches = sum(h * w for h, w in sizes)
    if pixels.shape != (1, c, p, patches * p):
        raise ValueError(f"pixel_values has shape {pixels.shape}; for target_sizes covering {patches} patches "
                         f"MiniCPM-V reads NaViT-packed pixels [1, {c}, {p}, {patches * p}], as its processor "
                         "makes them.")
    return num_image_features(v, sizes)


def check_images(config: ModelConfig, ids: np.ndarray, mask: np.ndarray, pixel_values: Any = None,
                 token_type_ids: Any = None, target_sizes: Any = None) -> HostImages | None:
    """Match the image placeholders of prompt ``ids[B, T]`` (``mask``: 1 = token) with ``pixel_values``.

    Returns None for a text-only prompt. Raises ``ValueError`` saying what to pass for: images given to a model
    that reads none, placeholders without images, images without (enough) placeholders, and malformed inputs.
    ``token_type_ids`` (Gemma 3: 1 at image tokens) decides the bidirectional blocks; when omitted they are
    derived from the placeholders, as the processor makes them.
    """
    v = config.vision
    if v is None:
        if pixel_values is not None:
            raise ValueError(f"pixel_values were given, but this {config.wrapper or config.model_type} model reads no "
                             "images (jaxgen reads the images of gemma3 and minicpmv4_6 checkpoints).")
        return None
    placeholder = (ids == v.image_token_id) & (mask == 1)
    count = int(placeholder.sum())
    if pixel_values is None:
        if count:
            raise ValueError(f"the prompt holds {count} image placeholder tokens (id {v.image_token_id}) but no "
                             "pixel_values were given: pass the processor's outputs (pixel_values"
                             f"{', target_sizes' if v.kind == 'minicpmv4_6' else ''}) with the prompt.")
        return None
    pixels = np.asarray(pixel_values)
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"pixel_values must be floating point (the processor's normalised pixels); got dtype "
                         f"{pixels.dtype}.")
    if not np.isfinite(pixels).all():
        raise ValueError("pixel_values holds NaN or infinity; pass the processor's normalised pixels.")
    sizes = _int_pairs(target_sizes, "target_sizes") if target_sizes is not None else ()
    features = _feature_count(v, pixels, sizes)
    if count != features:
        raise ValueError(f"the prompt holds {count} image placeholder tokens (id {v.image_token_id}) but the images "
                         f"make {features} image features: every image needs its placeholders in the text. Build "
                         "the prompt with the checkpoint's processor (its chat template inserts them), and pass "
                         "its input_ids with its pixel_values.")
    slots = np.where(placeholder, np.cumsum(placeholder.reshape(-1)).reshape(ids.shape) - 1, -1).astype(np.int32)
    blocks = None
    if v.kind == "gemma3":  # transformers: a block is a run of token_type 1; its tokens see each other
        kind = placeholder if token_type_ids is None else (np.asarray(token_type_ids) == 1) & (mask == 1)
        if kind.shape != ids.shape:
            raise ValueError(f"token_type_ids shape {kind.shape} differs from input_ids shape {ids.shape}.")
        start = kind & ~np.pad(kind, ((0, 0), (1, 0)))[:, :-1]
        blocks = np.where(kind, np.cumsum(start, axis=1) - 1, -1).astype(np.int32)
    return HostImages(pixel_values=pixels.astype(np.float32, copy=False), slots=slots, blocks=blocks,
                      target_sizes=sizes)


def model_ids(config: ModelConfig, ids: np.ndarray, images: HostImages | None) -> np.ndarray:
    """Placeholder ids outside the vocabulary read token 0's embedding (it is replaced), as transformers does."""
    if images is None or config.vision.image_token_id < config.vocab_size:
        return ids
    return np.where(images.slots >= 0, 0, ids).astype(np.int32)

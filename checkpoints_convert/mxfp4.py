"""MXFP4 (OCP microscaling FP4), the format of gpt-oss's released expert weights, read as bfloat16.

A checkpoint stores tensor ``W`` as ``W_blocks uint8 [E, rows, G, 16]`` (two FP4 E2M1 codes per byte, low nibble
first: 32 values per block) and ``W_scales uint8 [E, rows, G]`` (one power-of-two exponent per block, biased by
127). The value of code ``c`` in a block with scale ``s`` is ``FP4[c] * 2 ** (s - 127)``. As transformers'
``convert_moe_packed_tensors``, the result is ``[E, G * 32, rows]`` (rows last: the ``[E, in, out]`` layout of the
unquantized checkpoints). Every FP4 value times a power of two is exact in bfloat16.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

# E2M1 codes 0..15: sign bit, two exponent bits, one mantissa bit.
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      np.float32)
BLOCKS_SUFFIX, SCALES_SUFFIX = "_blocks", "_scales"


def dequantized_shape(blocks_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the dequantized tensor: ``[E, rows, G, 16]`` blocks -> ``[E, G * 32, rows]``."""
    e, rows, g, b = blocks_shape
    return e, g * 2 * b, rows


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``blocks uint8 [E, rows, G, 16]``, ``scales uint8 [E, rows, G]`` -> bfloat16 ``[E, G * 32, rows]``, one
    expert at a time (the float32 intermediate is one expert's size)."""
    out = np.empty(dequantized_shape(blocks.shape), ml_dtypes.bfloat16)
    for e in range(blocks.shape[0]):
        codes = blocks[e]
        values = np.stack([FP4_VALUES[codes & 0x0F], FP4_VALUES[codes >> 4]], axis=-1)  # [rows, G, 16, 2]
        values = values.reshape(*codes.shape[:2], -1)  # [rows, G, 32]: low nibble, high nibble, ...
        values = np.ldexp(values, scales[e].astype(np.int32)[..., None] - 127)
        out[e] = values.reshape(codes.shape[0], -1).T.astype(ml_dtypes.bfloat16)
    return out


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse for values MXFP4 holds exactly: ``[E, in, out]`` -> (blocks, scales) as the checkpoints store
    them. Each block of 32 gets the scale that maps its largest magnitude onto 6 or below; values are rounded to
    the nearest code. Used by the tests and to write MXFP4 test checkpoints."""
    x = np.asarray(x, np.float32).swapaxes(1, 2)  # [E, rows, in]
    e, rows, n = x.shape
    assert n % 32 == 0, "the quantized axis must be a multiple of 32"
    blocks = x.reshape(e, rows, n // 32, 32)
    peak = np.max(np.abs(blocks), axis=-1)
    exp = np.where(peak > 0, np.ceil(np.log2(np.maximum(peak, 1e-30) / 6.0)), 0).astype(np.int32)
    scaled = blocks / np.ldexp(1.0, exp)[..., None]
    codes = np.argmin(np.abs(scaled[..., None] - FP4_VALUES), axis=-1).astype(np.uint8)  # nearest code
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    # Contiguous: safetensors' numpy writer stores the raw buffer and ignores strides.
    return np.ascontiguousarray(packed, np.uint8), np.ascontiguousarray(exp + 127, np.uint8)

"""The vision side of a multimodal checkpoint (Gemma 3, MiniCPM-V 4.6): transformers' names mirrored below
``vision.``, so the table is four suffix rules rather than one rule per tensor.

``model.vision_tower.X.weight`` (5.x; 4.x Gemma 3 saved ``vision_tower.X.weight``) becomes ``vision.vision_tower.X``
+ ``.kernel`` (a Linear, transposed; the patch convolution, flattened to a dense kernel), ``.embedding`` (an
Embedding, as is) or ``.weight`` (a norm, as is); biases and bare parameters (Gemma 3's
``mm_input_projection_weight``) keep their names.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from jaxgen.config import VisionConfig


def conv_patch(x: np.ndarray) -> np.ndarray:
    """``Conv2d(kernel=stride=p).weight [D, C, p, p]`` -> a dense kernel ``[C*p*p, D]`` on flattened patches."""
    return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)


TRANSFORMS = {"identity": lambda x: x, "transpose": lambda x: np.ascontiguousarray(x.T), "conv_patch": conv_patch}
# The jaxgen shape each transform makes of an HF shape.
SHAPE_OF = {"identity": lambda s: s, "transpose": lambda s: s[::-1],
            "conv_patch": lambda s: (math.prod(s[1:]), s[0])}


def plan_vision_key(name: str, hf_shape: tuple[int, ...],
                    expected: Mapping[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """``(jaxgen name, transform)`` of vision tensor jaxgen stem ``name`` (``vision.`` + its key below
    ``model.``) with HF shape ``hf_shape``, or None when the model has no such parameter."""
    if name.endswith(".weight"):
        base = name[: -len(".weight")]
        if base + ".kernel" in expected:
            return base + ".kernel", "conv_patch" if len(hf_shape) == 4 else "transpose"
        if base + ".embedding" in expected:
            return base + ".embedding", "identity"
    return (name, "identity") if name in expected else None


def hf_vision_key(name: str, v: VisionConfig) -> tuple[str, callable]:
    """Export: jaxgen parameter ``name`` (``vision.*``) -> (transformers 5 key, jaxgen array -> HF array)."""
    stem = "model." + name[len("vision."):]
    if stem.endswith(".kernel"):
        key = stem[: -len(".kernel")] + ".weight"
        if key.endswith("patch_embedding.weight"):
            p, c = v.patch_size, v.num_channels
            return key, lambda x: np.ascontiguousarray(np.asarray(x).T.reshape(-1, c, p, p))
        return key, lambda x: np.ascontiguousarray(np.asarray(x).T)
    if stem.endswith(".embedding"):
        return stem[: -len(".embedding")] + ".weight", np.asarray
    return stem, np.asarray

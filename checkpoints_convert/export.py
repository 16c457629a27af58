"""jaxgen parameters -> a Hugging Face ``model.safetensors``: the conversion tables read backwards.

Used to save models trained in jaxgen (``jaxgen.demo.train``) so that transformers loads them. Checks every name
and shape against ``shapes.param_shapes(config)`` first, so a wrong tree fails before anything is written.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from checkpoints_convert import shapes, tables
from checkpoints_convert.atomic import atomic_file
from checkpoints_convert.convert import DTYPES
from checkpoints_convert.vision import hf_vision_key
from checkpoints_convert.writer import write_safetensors
from jaxgen.config import ModelConfig
from jaxgen.errors import CheckpointError
from jaxgen.families import multimodal

# transformers refuses safetensors files whose metadata "format" it does not know; "pt" is what torch writes.
HF_METADATA = {"format": "pt"}


def hf_layout(config: ModelConfig, params_by_name: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """``{jaxgen name: (HF key, transform)}`` for every parameter, after checking names and shapes."""
    expected = shapes.param_shapes(config)
    missing = sorted(set(expected) - set(params_by_name))
    unused = sorted(set(params_by_name) - set(expected))
    if missing or unused:
        raise CheckpointError(f"the parameters do not match the {config.model_type} config: missing "
                              f"{missing[:4] or 'none'}, unused {unused[:4] or 'none'}.")
    for name, want in expected.items():
        got = tuple(np.shape(params_by_name[name]))
        if got != want:
            raise CheckpointError(f"parameter {name} has shape {got}, the config implies {want}.")
    layout = {name: tables.hf_key(config.model_type, name) for name in expected if not name.startswith("vision.")}
    unmapped = sorted(name for name, found in layout.items() if found is None)
    assert not unmapped, f"the {config.model_type} table has no rule for {unmapped}"
    if config.wrapper:  # a multimodal checkpoint's language model: written where transformers 5 keeps it
        layout = {name: (multimodal.wrapped_key(key), t) for name, (key, t) in layout.items()}
    return layout


def save_hf_safetensors(path: str | os.PathLike, config: ModelConfig, params_by_name: Mapping[str, Any],
                        dtype: str | np.dtype | None = None) -> None:
    """Write ``{dotted jaxgen name: array}`` to ``path`` as a Hugging Face-layout safetensors file.

    Keys and layouts are transformers' (``...q_proj.weight [out, in]``; no ``lm_head.weight`` when tied), in
    sorted order. ``dtype``: "float32", "bfloat16", "float16" or a numpy dtype; None keeps each array's own.
    Written to a partial file beside ``path`` and renamed over it, one tensor in memory at a time.
    """
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype must be None (keep each array's) or one of {', '.join(DTYPES)}; got {dtype!r}.")
    cast = DTYPES[dtype] if isinstance(dtype, str) else (None if dtype is None else np.dtype(dtype))
    layout = hf_layout(config, params_by_name)
    # One HF tensor per key; a fused one (GPT-2 c_attn, Phi-3 qkv_proj) joins its parts in the table's order.
    text_key = multimodal.language_model_key if config.wrapper else (lambda k: k)
    groups = {key: tables.merge_order(config.model_type, text_key(key), config)
              for key in sorted({k for k, _ in layout.values()})}
    hf_shape = lambda n: tables.SHAPE_OF[layout[n][1]](tuple(np.shape(params_by_name[n])))  # noqa: E731
    specs = []
    for key, (names, axis, _) in groups.items():
        shape = hf_shape(names[0])
        if len(names) > 1:
            shape = shape[:axis] + (sum(hf_shape(n)[axis] for n in names),) + shape[axis + 1:]
        specs.append((key, cast or np.asarray(params_by_name[names[0]]).dtype, shape))
    # The vision side (Gemma 3, MiniCPM-V 4.6): one tensor per parameter, under transformers 5's model.* keys.
    vision = {}
    if config.vision is not None:
        for name in sorted(n for n in params_by_name if n.startswith("vision.")):
            key, back = hf_vision_key(name, config.vision)
            vision[key] = back(params_by_name[name])
            specs.append((key, cast or vision[key].dtype, vision[key].shape))

    def arrays():
        for (key, dtype, shape), (names, axis, interleave) in zip(specs, groups.values()):
            parts = [tables.TRANSFORMS[layout[n][1]](np.asarray(params_by_name[n])).astype(dtype, copy=False)
                     for n in names]
            if len(parts) == 1:
                yield np.ascontiguousarray(parts[0])
            elif isinstance(interleave, list):  # regrouped: part k goes back to its indices
                out = np.empty(shape, dtype)
                for part, indices in zip(parts, interleave):
                    out[(slice(None),) * axis + (np.asarray(indices),)] = part
                yield out
            elif interleave:  # slice j of part k lands at j * len(parts) + k
                yield np.ascontiguousarray(np.stack(parts, axis=axis + 1).reshape(shape))
            else:
                yield np.ascontiguousarray(np.concatenate(parts, axis=axis))
        for x in vision.values():
            yield np.ascontiguousarray(x.astype(cast or x.dtype, copy=False))

    with atomic_file(os.fspath(path)) as tmp:
        write_safetensors(tmp, specs, arrays(), HF_METADATA)

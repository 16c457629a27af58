"""Hugging Face checkpoint -> jaxgen parameters, in memory or as a converted checkpoint folder.

Every tensor is accounted for before any data is read: each HF key maps through the family table to a name in
``shapes.param_shapes(config)`` with the right shape, and every jaxgen parameter gets exactly one source.
Anything else (unknown, missing or unused tensors, wrong shapes) is a :class:`CheckpointError` that names it.
Nothing here imports jax or flax: shapes come from the config alone.

A converted folder holds ``config.json`` (the HF one, verbatim), generation and tokenizer files, params in
``params-0000i-of-0000N.safetensors`` keyed by jaxgen's dotted names, and ``jaxgen_checkpoint.json``:
``{"format": "jaxgen-safetensors", "version": 1, "dtype", "source", "weight_map": {name: file}}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import re
import shutil
import sys
import warnings
from typing import Callable, Iterator

import ml_dtypes
import numpy as np
from tqdm import tqdm

from checkpoints_convert import shapes, tables, vision
from checkpoints_convert.atomic import atomic_folder, sigterm_raises
from checkpoints_convert.reader import Checkpoint, TensorInfo, open_checkpoint, open_safetensors
from checkpoints_convert.writer import write_safetensors
from jaxgen.config import ModelConfig
from jaxgen.errors import CheckpointError
from jaxgen.families import multimodal

FORMAT = "jaxgen-safetensors"
VERSION = 1
MARKER = "jaxgen_checkpoint.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# Copied beside the params when present, so a converted folder is self-contained for tokenizing and generating.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
              "chat_template.jinja", "chat_template.json")
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16),
}
# Plain floating-point weights; float8 and integer tensors belong to quantized formats that need their scales.
_FLOAT_DTYPES = {np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
_SHOW = 4  # how many offending names an error message lists before "and N more"


@dataclasses.dataclass(frozen=True)
class Item:
    """One planned output parameter: its source tensor, jaxgen name, transform and output dtype/shape; ``part``:
    ``(axis, start, stop)`` of the source when it is one of several parameters fused in one tensor."""

    source: TensorInfo
    target: str
    transform: str
    dtype: np.dtype
    shape: tuple[int, ...]
    part: tuple | None = None  # tables.Piece.part
    stack: tuple[TensorInfo, ...] = ()  # per-expert sources, in expert order, stacked on a new leading axis

    @property
    def sources(self) -> tuple[TensorInfo, ...]:
        return self.stack or (self.source,)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def _layers_hint(config: ModelConfig, keys: list[str]) -> str:
    found = {int(m.group(1)) for k in keys if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    if found and max(found) + 1 != config.num_hidden_layers:
        return (f" The weights have {max(found) + 1} layers but config.json says "
                f"num_hidden_layers={config.num_hidden_layers}.")
    return ""


def _shape_hint(config: ModelConfig, got: tuple[int, ...], want: tuple[int, ...]) -> str:
    """Name the config fields that produced the dimensions where ``want`` differs from ``got``."""
    fields = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
              "intermediate_size": config.intermediate_size, "head_dim": config.head_dim,
              "num_attention_heads*head_dim": config.q_size, "num_key_value_heads*head_dim": config.kv_size}
    blamed = []
    if len(got) == len(want):
        for g, w in zip(got, want):
            if g != w:
                blamed += [f"{k}={v}" for k, v in fields.items() if v == w and f"{k}={v}" not in blamed]
    return f" (from {', '.join(blamed)})" if blamed else ""


def _resolve_dtype(dtype: str | None) -> np.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be None (keep the checkpoint's) or one of {', '.join(DTYPES)}; got {dtype!r}.")
    return DTYPES[dtype]


def plan_conversion(ckpt: Checkpoint, config: ModelConfig, dtype: np.dtype | None = None) -> list[Item]:
    """Map every tensor of ``ckpt`` to a jaxgen parameter, checking names and shapes against ``config``.

    Returns the items in on-disk order. Reads no tensor data, except a tied checkpoint's redundant
    ``lm_head.weight``, which must equal the embedding to be dropped.
    """
    expected = shapes.param_shapes(config)
    where = ckpt.folder
    items: list[Item] = []
    unknown: list[str] = []
    shape_errors: list[str] = []
    targets: set[str] = set()  # jaxgen names some tensor maps to, even one of the wrong shape
    tied_copy: TensorInfo | None = None
    stacked: dict[str, dict[int, TensorInfo]] = {}  # stacked parameter -> {expert index: its tensor}
    keys = _language_model_keys(ckpt, config)  # the text model's key of each tensor (None: another part)
    for info in ckpt.ordered():
        key = keys[info.name]
        if key is None and config.vision is not None and (stem := multimodal.vision_key(info.name)) is not None:
            found = vision.plan_vision_key(stem, info.shape, expected)
            if found is None:
                unknown.append(info.name)
                continue
            target, transform = found
            targets.add(target)
            got = vision.SHAPE_OF[transform](info.shape)
            if got != expected[target]:
                shape_errors.append(f"tensor '{info.name}' in {os.path.basename(info.file)} has shape {info.shape}, "
                                    f"but config.json implies {expected[target]} after {transform}")
                continue
            items.append(Item(info, target, transform, dtype or info.dtype, expected[target]))
            continue
        if key is None or tables.IGNORED.fullmatch(key) or tables.is_mtp_layer(config, key):
            continue
        if config.tie_word_embeddings and key == tables.TIED_HEAD_KEY:
            tied_copy = info
            continue
        planned = tables.plan_key(config.model_type, key, expected, config)
        if planned is None:
            unknown.append(info.name)
            continue
        pieces, want_src = planned  # a fused tensor (GPT-2 c_attn, Phi-3 qkv_proj) becomes several parameters
        if pieces[0].index is not None:  # one expert of a stacked parameter (MoE): gathered after the loop
            piece = pieces[0]
            if piece.index in stacked.setdefault(piece.target, {}):
                raise CheckpointError(f"{where}: two tensors map to expert {piece.index} of {piece.target}; one is "
                                      f"{info.name}.")
            if info.shape != want_src:
                shape_errors.append(f"tensor '{info.name}' in {os.path.basename(info.file)} has shape {info.shape}, "
                                    f"but config.json implies {want_src}")
            stacked[piece.target][piece.index] = info
            if piece.target not in targets:
                items.append(Item(info, piece.target, piece.transform, dtype or info.dtype, expected[piece.target]))
            targets.add(piece.target)
            continue
        for piece in pieces:
            if piece.target in targets:  # cannot happen with a well-formed table; guards one being edited
                raise CheckpointError(f"{where}: two tensors map to jaxgen parameter {piece.target}; one is "
                                      f"{info.name}.")
            targets.add(piece.target)
        if info.shape != want_src:
            shape_errors.append(f"tensor '{info.name}' in {os.path.basename(info.file)} has shape {info.shape}, "
                                f"but config.json implies {want_src}{_shape_hint(config, info.shape, want_src)}")
            continue
        if info.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{info.file}: tensor '{info.name}' has dtype {info.dtype}; jaxgen converts "
                                  "float32/float16/bfloat16/float64 weights only (quantized and float8 checkpoints "
                                  "are not supported).")
        items += [Item(info, p.target, p.transform, dtype or info.dtype, expected[p.target], p.part) for p in pieces]

    for k, item in enumerate(items):
        if item.target in stacked:
            experts = stacked[item.target]
            count = expected[item.target][0]
            if sorted(experts) != list(range(count)):
                shape_errors.append(f"parameter {item.target} needs experts 0..{count - 1}, the weights hold "
                                    f"{len(experts)} (indices {sorted(experts)[:_SHOW]}...)")
                continue
            if any(i.dtype not in _FLOAT_DTYPES for i in experts.values()):
                raise CheckpointError(f"{where}: the experts of {item.target} are not float weights (quantized "
                                      "checkpoints are not supported).")
            items[k] = dataclasses.replace(item, stack=tuple(experts[e] for e in range(count)))
    missing = sorted(set(expected) - targets)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} tensor(s) that the {config.model_type} layout of this config does not "
                         f"use: {_names(unknown)}")
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing from the weights: "
                         f"{_names([tables.source_key(config.model_type, m) for m in missing])}")
        hint = _layers_hint(config, [k for k in keys.values() if k is not None])
        if "lm_head.kernel" in missing:
            hint += " If the model ties its LM head to the embeddings, config.json should say tie_word_embeddings=true."
        raise CheckpointError(f"{where}: the weights do not match config.json: {'; '.join(parts)}.{hint} Use the "
                              "config.json that came with these weights.")
    if shape_errors:
        more = f" ({len(shape_errors) - 1} more tensors disagree)" if len(shape_errors) > 1 else ""
        raise CheckpointError(f"{where}: the weights disagree with config.json: {shape_errors[0]}{more}. Use the "
                              "config.json that came with these weights, or re-download a damaged file.")
    if tied_copy is not None:
        embed = tables.embed_key(config.model_type, [k for k in keys.values() if k is not None]) or tables.EMBED_KEY
        _check_tied_copy(ckpt, tied_copy, next((n for n, k in keys.items() if k == embed), embed))
    return items


def _language_model_keys(ckpt: Checkpoint, config: ModelConfig) -> dict[str, str | None]:
    """``{checkpoint key: the text model's key}``: the key itself, except in a multimodal checkpoint
    (``config.wrapper``), whose language model is renamed onto the text layout and whose other parts (vision and
    audio towers, projectors) map to None and are left out, with a warning that says so."""
    if config.wrapper is None:
        return {name: name for name in ckpt.tensors}
    keys = {name: multimodal.language_model_key(name) for name in ckpt.tensors}
    left = sorted(name for name, key in keys.items() if key is None)
    if left and config.vision is None:
        warnings.warn(f"{ckpt.folder}: a {config.wrapper} checkpoint; jaxgen loads its language model and leaves out "
                      f"the {len(left)} tensors of its other parts (e.g. {left[0]}): images are not read.",
                      stacklevel=3)
    return keys


def _check_tied_copy(ckpt: Checkpoint, head: TensorInfo, embed_key: str) -> None:
    embed = ckpt.tensors[embed_key]
    same = head.shape == embed.shape
    if same:
        a, b = ckpt.read(head.name), ckpt.read(embed.name)
        same = bool(np.array_equal(a.astype(np.float32), b.astype(np.float32)))
    if not same:
        raise CheckpointError(f"{head.file}: tensor '{head.name}' differs from '{embed.name}', but config.json says "
                              "tie_word_embeddings=true, so jaxgen would ignore it. Use the config.json that came "
                              "with these weights (tie_word_embeddings=false if the head is separate).")


def _produce(ckpt: Checkpoint, item: Item) -> np.ndarray:
    if item.stack:  # experts one at a time, transformed and cast, then stacked
        x = np.stack([_produce(ckpt, dataclasses.replace(item, source=s, stack=(), shape=item.shape[1:]))
                      for s in item.stack])
        assert x.shape == item.shape and x.dtype == item.dtype, (item.target, x.shape, x.dtype)
        return x
    x = ckpt.read(item.source.name)
    if item.target.startswith("vision."):  # the vision side's own transforms (checkpoints_convert.vision)
        transform = vision.TRANSFORMS[item.transform]
    else:
        piece = tables.Piece(item.target, item.transform, item.part)
        transform = lambda a: tables.cut(a, piece)  # noqa: E731 (the part, if any, then the named transform)
    # Casts commute with the transforms; narrowing first keeps the transform's copy small.
    if item.dtype.itemsize < x.dtype.itemsize:
        x = transform(x.astype(item.dtype))
    else:
        x = transform(x).astype(item.dtype, copy=False)
    # The plan promised this shape and dtype (and a shard header was written from it): hold the transform to it.
    assert x.shape == item.shape and x.dtype == item.dtype, (item.target, x.shape, x.dtype)
    return x


@contextlib.contextmanager
def _progress(items: list[Item], enabled: bool, label: str) -> Iterator[Callable[[Item], None]]:
    """A bar of bytes and tensors done, with an ETA, on stderr; yields the function that advances it by one item."""
    # On a terminal redraw often; in a log, a line every 10 s keeps it readable.
    bar = tqdm(total=sum(s.nbytes for i in items for s in i.sources), desc=label, unit="B", unit_scale=True,
               unit_divisor=1024, file=sys.stderr, disable=not enabled, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    done = 0

    def advance(item: Item) -> None:
        nonlocal done
        done += 1
        bar.set_postfix_str(f"{done}/{len(items)} tensors", refresh=False)
        bar.update(sum(s.nbytes for s in item.sources))

    try:
        yield advance
    except BaseException:
        bar.leave = False  # a failed run ends with its error line, not with a half-filled bar
        raise
    finally:
        bar.close()


def load_hf_params(hf_dir: str | os.PathLike, dtype: str | None = None,
                   progress: bool = False) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read and convert a Hugging Face checkpoint folder in memory.

    Returns the parsed config and ``{jaxgen dotted name: array}`` (linear kernels ``[in, out]``). ``dtype``:
    None keeps each tensor's checkpoint dtype; "float32", "bfloat16" or "float16" casts. Raises
    :class:`CheckpointError` / :class:`ConfigError` for anything that does not fit.
    """
    hf_dir = os.fspath(hf_dir)
    cast = _resolve_dtype(dtype)
    if is_converted(hf_dir):
        raise CheckpointError(f"{hf_dir}: is already a jaxgen-converted checkpoint; read it with read_converted().")
    config = ModelConfig.from_pretrained(hf_dir)
    with open_checkpoint(hf_dir) as ckpt:
        items = plan_conversion(ckpt, config, cast)
        params = {}
        with _progress(items, progress, "loading") as advance:
            for item in items:
                params[item.target] = _produce(ckpt, item)
                advance(item)
        return config, params


def _assign_shards(items: list[Item], max_shard_bytes: int) -> list[list[Item]]:
    """Greedy in-order packing; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def shard_name(index: int, count: int) -> str:
    return f"params-{index:05d}-of-{count:05d}.safetensors"


def _write_shard(path: str, items: list[Item], produce: Callable[[Item], np.ndarray]) -> None:
    """One params file, streamed tensor by tensor (only one converted tensor is in memory at a time)."""
    write_safetensors(path, [(i.target, i.dtype, i.shape) for i in items], map(produce, items), {"format": FORMAT})


def _copy_file(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb") as f:
        os.fsync(f.fileno())


def _dtype_label(items: list[Item]) -> str:
    names = sorted({item.dtype.name for item in items})
    return names[0] if len(names) == 1 else "mixed:" + ",".join(names)


def convert_checkpoint(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None,
                       progress: bool = True, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> str:
    """Convert a Hugging Face checkpoint folder into a jaxgen checkpoint folder ``out_dir``; returns its path.

    Atomic (see :mod:`checkpoints_convert.atomic`): everything is written into a hidden partial folder beside
    ``out_dir``, fsynced, given the modes the umask implies, then renamed into place. On any failure the partial
    is removed and ``out_dir`` never appears: errors, KeyboardInterrupt, and SIGTERM (which, in the main thread,
    raises :class:`~checkpoints_convert.atomic.Terminated` while this runs). Partials of the same target left by
    killed runs are removed first. Write failures (disk full, read-only, permissions) raise
    :class:`CheckpointError`. Holds one tensor in memory at a time. ``max_shard_bytes`` caps each params file (a
    single larger tensor gets a file of its own). ``progress`` shows bytes/tensors done and an ETA on stderr.
    """
    hf_dir, out_dir = os.fspath(hf_dir), os.fspath(out_dir)
    # Checked before any work, so a long conversion cannot end by failing to write.
    if os.path.lexists(out_dir):
        raise CheckpointError(f"{out_dir}: already exists; remove it or choose another output path.")
    cast = _resolve_dtype(dtype)
    if not (isinstance(max_shard_bytes, numbers.Real) and math.isfinite(max_shard_bytes) and max_shard_bytes > 0):
        raise ValueError(f"max_shard_bytes must be a positive number of bytes, got {max_shard_bytes!r}.")
    if is_converted(hf_dir):
        raise CheckpointError(f"{hf_dir}: is already a jaxgen-converted checkpoint; there is nothing to convert.")
    log = (lambda line: print(line, file=sys.stderr)) if progress else None

    with sigterm_raises():
        config = ModelConfig.from_pretrained(hf_dir)
        with open_checkpoint(hf_dir) as ckpt:
            items = plan_conversion(ckpt, config, cast)
            shards = _assign_shards(items, max_shard_bytes)
            names = [shard_name(i + 1, len(shards)) for i in range(len(shards))]
            # The partial folder first: a note about removing stale ones then comes before the bar is drawn.
            with atomic_folder(out_dir, log) as tmp, _progress(items, progress, "converting") as advance:
                def produce(item: Item) -> np.ndarray:
                    x = _produce(ckpt, item)
                    advance(item)
                    return x

                for name in SIDE_FILES:
                    if os.path.isfile(os.path.join(hf_dir, name)):
                        _copy_file(os.path.join(hf_dir, name), os.path.join(tmp, name))
                for name, shard in zip(names, shards):
                    _write_shard(os.path.join(tmp, name), shard, produce)
                marker = {"format": FORMAT, "version": VERSION, "dtype": _dtype_label(items),
                          "source": os.path.abspath(hf_dir),
                          "weight_map": {item.target: name for name, shard in zip(names, shards) for item in shard}}
                with open(os.path.join(tmp, MARKER), "w") as f:
                    json.dump(marker, f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
    return out_dir


def is_converted(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`convert_checkpoint` (it has ``jaxgen_checkpoint.json``)."""
    return os.path.isfile(os.path.join(os.fspath(path), MARKER))


def read_converted(path: str | os.PathLike, lazy: bool = False) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read a converted checkpoint: the config and ``{jaxgen dotted name: array}`` in the dtype it was saved in.

    Validates ``jaxgen_checkpoint.json``, every params file's header, and names/shapes against the config.
    ``lazy=True`` returns read-only ``np.memmap`` views instead of loaded arrays: nothing is read until indexed, so
    a device placing its own slice of a tensor (``jaxgen.load_model(..., mesh=...)``) reads only that slice.
    """
    path = os.fspath(path)
    marker_file = os.path.join(path, MARKER)
    if not os.path.isfile(marker_file):
        raise CheckpointError(f"{path}: no {MARKER}; this is not a folder written by `jaxgen convert`.")
    try:
        with open(marker_file) as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{marker_file}: cannot be read as JSON ({e}); convert the checkpoint again.") from e
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise CheckpointError(f"{marker_file}: 'format' is not {FORMAT!r}; convert the checkpoint again.")
    if marker.get("version") != VERSION:
        raise CheckpointError(f"{marker_file}: version {marker.get('version')!r} is not supported (this jaxgen "
                              f"reads version {VERSION}); convert the checkpoint again with this jaxgen.")
    weight_map = marker.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and f and os.path.basename(f) == f and f not in (".", "..")
            for f in weight_map.values()):
        raise CheckpointError(f"{marker_file}: 'weight_map' must map names to params files in this folder; "
                              "convert the checkpoint again.")
    config = ModelConfig.from_pretrained(path)
    files = sorted(set(weight_map.values()))
    for file in files:
        if not os.path.isfile(os.path.join(path, file)):
            raise CheckpointError(f"{path}: params file {file} listed in {MARKER} is missing; convert the "
                                  "checkpoint again.")
    with open_safetensors([os.path.join(path, f) for f in files], path, weight_map, marker_file) as ckpt:
        expected = shapes.param_shapes(config)
        missing = sorted(set(expected) - set(ckpt.tensors))
        unused = sorted(set(ckpt.tensors) - set(expected))
        if missing or unused:
            raise CheckpointError(f"{path}: params do not match config.json: missing {_names(missing) or 'none'}; "
                                  f"unused {_names(unused) or 'none'}. Convert the checkpoint again.")
        for name, info in ckpt.tensors.items():
            if info.shape != expected[name]:
                raise CheckpointError(f"{info.file}: tensor '{name}' has shape {info.shape}, config.json implies "
                                      f"{expected[name]}. Convert the checkpoint again.")
        if lazy:
            return config, {info.name: np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset,
                                                 shape=info.shape) for info in ckpt.ordered()}
        return config, {info.name: ckpt.read(info.name) for info in ckpt.ordered()}

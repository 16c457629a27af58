"""Lazy, validating reader of a Hugging Face checkpoint folder's tensors.

Supported layouts, in order of preference: ``model.safetensors``; sharded ``model.safetensors.index.json``;
``pytorch_model.bin``; sharded ``pytorch_model.bin.index.json``. Opening a checkpoint reads only headers; tensor
data is read one tensor at a time by :meth:`Checkpoint.read`, so converting needs memory for one tensor, not
the model.

Safetensors files are parsed here rather than with ``safetensors.safe_open``: its numpy backend cannot return
bfloat16, and its errors do not say which file is broken or what to do. Every header is checked against the
file before any offset in it is trusted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import warnings
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from checkpoints_convert import mxfp4
from jaxgen.errors import CheckpointError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

# safetensors dtype tag -> numpy dtype (little-endian, as the format specifies).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
DTYPE_TAGS: dict[np.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# The safetensors format caps the JSON header at 100 MB; a larger length field means a corrupt file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_REDOWNLOAD = "re-download it or re-save the model with transformers' save_pretrained"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data.

    ``offset`` is the absolute byte offset of the data in ``file`` (safetensors only; -1 for torch files).
    """

    name: str
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    # A tensor computed from stored ones: MXFP4 (blocks, scales), dequantized on read (checkpoints_convert.mxfp4).
    mxfp4: tuple["TensorInfo", "TensorInfo"] | None = None


def _fail(file: str, tensor: str | None, problem: str, todo: str = _REDOWNLOAD) -> CheckpointError:
    where = f"{file}: tensor '{tensor}'" if tensor else file
    return CheckpointError(f"{where}: {problem}; {todo}.")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key '{key}'")
        seen[key] = value
    return seen


def read_safetensors_header(file: str) -> dict[str, TensorInfo]:
    """Parse and validate the header of one ``.safetensors`` file; ``{tensor name: TensorInfo}``.

    Checks: the length field fits in the file, the header is a JSON object without duplicate keys, every dtype
    is known, every shape is a list of non-negative ints whose size times the dtype's itemsize equals the byte
    range, and the byte ranges tile the data section exactly (no gaps, overlaps or bytes past the end), which
    also catches truncated files. Raises :class:`CheckpointError` naming the file and tensor.
    """
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(file, None, f"only {size} bytes, too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, _MAX_HEADER_BYTES):
                raise _fail(file, None, f"header length field says {header_len} bytes but the file has {size} "
                                        "bytes (truncated or not a safetensors file)")
            raw = f.read(header_len)
    except OSError as e:
        raise _fail(file, None, f"cannot be read ({e})", "check the path and permissions") from e
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(file, None, f"header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _fail(file, None, f"header is a JSON {type(header).__name__}, not an object")

    data_start, data_len = 8 + header_len, size - 8 - header_len
    infos: list[tuple[int, int, TensorInfo]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(file, name, f"header entry {entry!r} must have exactly dtype, shape and data_offsets")
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if tag not in SAFETENSORS_DTYPES:
            raise _fail(file, name, f"unknown dtype {tag!r} (known: {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _fail(file, name, f"shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _fail(file, name, f"data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
        begin, end = offsets
        dtype = SAFETENSORS_DTYPES[tag]
        want = math.prod(shape) * dtype.itemsize
        if end - begin != want:
            raise _fail(file, name, f"header says {tag}{shape} ({want} bytes) but its data_offsets span "
                                    f"{end - begin} bytes, so the header's dtype or shape is wrong")
        if end > data_len:
            raise _fail(file, name, f"data ends at byte {data_start + end} but the file has only {size} bytes "
                                    "(truncated download?)")
        infos.append((begin, end, TensorInfo(name, file, dtype, tuple(shape), data_start + begin, want)))

    # Tensors must tile [0, data_len) exactly: a gap or overlap means the offsets cannot be trusted.
    infos.sort(key=lambda t: (t[0], t[1]))
    position = 0
    for begin, end, info in infos:
        if begin != position:
            kind = "overlaps the previous tensor" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise _fail(file, info.name, f"data_offsets [{begin}, {end}] {kind}, so the header is corrupt")
        position = end
    if position != data_len:
        raise _fail(file, None, f"{data_len - position} bytes after the last tensor that no header entry covers "
                                "(corrupt header or wrong file)")
    return {info.name: info for _, _, info in infos}


def _read_json(file: str) -> dict:
    try:
        with open(file) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise _fail(file, None, f"cannot be read as JSON ({e})") from e
    if not isinstance(data, dict):
        raise _fail(file, None, f"expected a JSON object, got {type(data).__name__}")
    return data


def _index_files(folder: str, index_name: str) -> tuple[str, dict[str, str]]:
    """The shard files and the ``weight_map`` of a sharded checkpoint's index."""
    index = os.path.join(folder, index_name)
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise _fail(index, None, "has no 'weight_map' object")
    for tensor, shard in weight_map.items():
        # A shard must be a plain file name beside the index: refuse paths that would read elsewhere.
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise _fail(index, tensor, f"weight_map entry {shard!r} is not a file name in this folder")
        if not os.path.isfile(os.path.join(folder, shard)):
            raise _fail(index, tensor, f"its shard '{shard}' is missing from {folder}",
                        "download every shard the index lists")
    return index, weight_map


class Checkpoint:
    """The tensors of one checkpoint folder. ``tensors`` maps each name to its :class:`TensorInfo`.

    Use as a context manager, or call :meth:`close` (it drops the torch files' memory maps).
    """

    def __init__(self, folder: str, tensors: dict[str, TensorInfo], kind: str,
                 torch_state: dict[str, dict[str, Any]] | None = None):
        self.folder = folder
        self.tensors = tensors
        self.kind = kind  # "safetensors" | "pytorch"
        self._torch_state = torch_state or {}

    @property
    def files(self) -> list[str]:
        return sorted({info.file for info in self.tensors.values()})

    def ordered(self) -> list[TensorInfo]:
        """Tensors in on-disk order (file, then offset), so reading them one by one is sequential I/O."""
        return sorted(self.tensors.values(), key=lambda i: (i.file, i.offset, i.name))

    def read(self, name: str) -> np.ndarray:
        """The data of tensor ``name`` as a new numpy array (bfloat16 via ``ml_dtypes``)."""
        info = self.tensors[name]
        if info.mxfp4 is not None:
            blocks, scales = info.mxfp4
            return mxfp4.dequantize(self._read(blocks), self._read(scales))
        return self._read(info)

    def _read(self, info: TensorInfo) -> np.ndarray:
        name = info.name
        if self.kind == "pytorch":
            return _torch_to_numpy(self._torch_state[info.file][name])
        out = np.empty(info.shape, info.dtype)
        try:
            with open(info.file, "rb") as f:
                f.seek(info.offset)
                got = f.readinto(out.reshape(-1).view(np.uint8)) if info.nbytes else 0
        except OSError as e:
            raise _fail(info.file, name, f"cannot be read ({e})") from e
        if got != info.nbytes:
            raise _fail(info.file, name, f"read {got} of {info.nbytes} bytes (file changed or truncated)")
        return out

    def close(self) -> None:
        self._torch_state.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)


def _check_placement(tensors: dict, name: str, file: str, weight_map: dict[str, str] | None, index: str) -> None:
    """A tensor is stored once, in the file the index (if any) says."""
    if name in tensors:
        raise _fail(file, name, f"also stored in {tensors[name].file}; which copy to use is ambiguous")
    if weight_map is not None and weight_map.get(name) != os.path.basename(file):
        raise _fail(index, name, f"is in {os.path.basename(file)} but the index maps it to "
                                 f"{weight_map.get(name)!r}")


def _check_index_complete(tensors: dict, weight_map: dict[str, str] | None, index: str) -> None:
    """Every tensor the index lists was found in its file."""
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise _fail(index, absent[0], f"is listed in the index but absent from {weight_map[absent[0]]} "
                                          f"({len(absent)} such tensors)")


def open_safetensors(files: list[str], folder: str, weight_map: dict[str, str] | None = None,
                     index: str | None = None) -> Checkpoint:
    """A :class:`Checkpoint` over ``.safetensors`` files, checked against an index's ``weight_map`` if given."""
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in read_safetensors_header(file).items():
            _check_placement(tensors, name, file, weight_map, index or folder)
            tensors[name] = info
    _check_index_complete(tensors, weight_map, index or folder)
    return Checkpoint(folder, tensors, "safetensors")


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch  # only torch checkpoints need it

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the same 16-bit patterns as ml_dtypes' bfloat16.
        return np.array(t.view(torch.int16).numpy().view(ml_dtypes.bfloat16))
    return np.array(t.numpy())


def _torch_dtype(t: Any, file: str, name: str) -> np.dtype:
    import torch

    if t.dtype == torch.bfloat16:
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(torch.empty((), dtype=t.dtype).numpy().dtype)
    except TypeError as e:
        raise _fail(file, name, f"has torch dtype {t.dtype}, which jaxgen cannot read",
                    "convert the weights to float32/bfloat16/float16") from e


def open_torch(files: list[str], folder: str, weight_map: dict[str, str] | None = None,
               index: str | None = None) -> Checkpoint:
    """A :class:`Checkpoint` over ``pytorch_model*.bin`` files, loaded memory-mapped with ``weights_only=True``."""
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{folder}: has only pytorch_model*.bin weights, and reading them needs torch "
                              "(pip install torch), or convert them to safetensors first.") from e
    tensors: dict[str, TensorInfo] = {}
    state: dict[str, dict[str, Any]] = {}
    for file in files:
        try:
            try:
                sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # Files in torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped.
                sd = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types (pickle, zip, EOF, Runtime) for a bad file
            raise _fail(file, None, f"cannot be loaded by torch.load(weights_only=True) "
                                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise _fail(file, None, "does not hold a flat {name: tensor} state dict")
        for name, t in sd.items():
            _check_placement(tensors, name, file, weight_map, index or folder)
            dtype = _torch_dtype(t, file, name)
            tensors[name] = TensorInfo(name, file, dtype, tuple(t.shape), -1, t.numel() * dtype.itemsize)
        state[file] = sd
    _check_index_complete(tensors, weight_map, index or folder)
    return Checkpoint(folder, tensors, "pytorch", state)


def _fold_mxfp4(ckpt: Checkpoint) -> Checkpoint:
    """Replace each MXFP4 pair ``W_blocks`` + ``W_scales`` (uint8) by one bfloat16 tensor ``W``, dequantized when
    read; warns once that it does. A half pair or a pair of other dtypes or shapes is an error naming it."""
    t = ckpt.tensors
    pairs = [n[: -len(mxfp4.BLOCKS_SUFFIX)] for n in t if n.endswith(mxfp4.BLOCKS_SUFFIX)]
    pairs += [n[: -len(mxfp4.SCALES_SUFFIX)] for n in t if n.endswith(mxfp4.SCALES_SUFFIX)
              and n[: -len(mxfp4.SCALES_SUFFIX)] not in pairs]
    for base in pairs:
        blocks, scales = t.get(base + mxfp4.BLOCKS_SUFFIX), t.get(base + mxfp4.SCALES_SUFFIX)
        where = (blocks or scales).file
        if blocks is None or scales is None:
            missing = base + (mxfp4.SCALES_SUFFIX if scales is None else mxfp4.BLOCKS_SUFFIX)
            raise _fail(where, base, f"is MXFP4 but '{missing}' is missing (MXFP4 needs blocks and scales)")
        ok = (blocks.dtype == scales.dtype == np.uint8 and len(blocks.shape) == 4 and blocks.shape[-1] == 16
              and blocks.shape[:-1] == scales.shape)
        if not ok:
            raise _fail(where, base, f"is not MXFP4 as jaxgen reads it: blocks {blocks.dtype}{list(blocks.shape)}, "
                        f"scales {scales.dtype}{list(scales.shape)}; expected uint8 [E, rows, G, 16] and uint8 "
                        "[E, rows, G]", "use the checkpoint as published, or one saved in bfloat16")
        shape = mxfp4.dequantized_shape(blocks.shape)
        del t[blocks.name], t[scales.name]
        t[base] = TensorInfo(base, blocks.file, np.dtype(ml_dtypes.bfloat16), shape, blocks.offset,
                             2 * math.prod(shape), mxfp4=(blocks, scales))
    if pairs:
        warnings.warn(f"{ckpt.folder}: {len(pairs)} MXFP4 tensors (e.g. {pairs[0]}) are dequantized to bfloat16 "
                      "on conversion; the converted weights take about 4x the disk space of the MXFP4 ones.",
                      stacklevel=3)
    return ckpt


def open_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Open the weights of a Hugging Face checkpoint folder (headers only; data is read per tensor). MXFP4 pairs
    (gpt-oss) appear as one bfloat16 tensor each, dequantized when read."""
    return _fold_mxfp4(_open_checkpoint(folder))


def _open_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: not a folder; point to a Hugging Face checkpoint folder "
                              "(config.json + model.safetensors).")
    join = lambda name: os.path.join(folder, name)  # noqa: E731
    if os.path.isfile(join(SAFETENSORS_FILE)):
        return open_safetensors([join(SAFETENSORS_FILE)], folder)
    if os.path.isfile(join(SAFETENSORS_INDEX)):
        index, weight_map = _index_files(folder, SAFETENSORS_INDEX)
        return open_safetensors([join(f) for f in sorted(set(weight_map.values()))], folder, weight_map, index)
    if os.path.isfile(join(TORCH_FILE)):
        return open_torch([join(TORCH_FILE)], folder)
    if os.path.isfile(join(TORCH_INDEX)):
        index, weight_map = _index_files(folder, TORCH_INDEX)
        return open_torch([join(f) for f in sorted(set(weight_map.values()))], folder, weight_map, index)
    raise CheckpointError(f"{folder}: no weights found; expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
                          f"{TORCH_FILE} or {TORCH_INDEX} (download them with the config).")

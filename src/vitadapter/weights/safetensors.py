"""Reading and writing the safetensors format without extra dependencies.

Layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range in the data section (plus an optional ``__metadata__`` dict of
strings), then the raw little-endian data. Reading copies each tensor into memory of its own
(no memory map): a file truncated or rewritten while a model loaded from it runs cannot change its
weights or crash the process with SIGBUS.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_path

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` (written to a temporary file, fsynced, then renamed)."""
    path = Path(path)
    # Largest items first keeps every tensor aligned to its element size.
    items = sorted(tensors.items(), key=lambda kv: -kv[1].element_size())
    header: dict[str, object] = {}
    offset = 0
    for name, tensor in items:
        if tensor.dtype not in _CODES:
            raise CheckpointError(f"cannot store {name}: dtype {tensor.dtype} has no "
                                  "safetensors code")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, tensor in items:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))  # type: ignore[arg-type]


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file into memory of our own; returns ``(tensors, metadata)``. The
    header is checked completely (:func:`_entries`) before the data is read."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        length = int.from_bytes(head, "little")
        if length > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header")
        try:
            header = json.loads(f.read(length), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header") from None
        except RecursionError:
            raise CheckpointError(f"{path}: corrupt safetensors header (nested too deeply)"
                                  ) from None
    base = 8 + length
    entries, metadata = _entries(path, header, size - base)
    return _read_private(path, base, entries), metadata


Entry = tuple[torch.dtype, list[int], int, int]  # dtype, shape, start and end in the data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a header may hold")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _entries(path: Path, header: object, data_size: int) -> tuple[dict[str, Entry],
                                                                   dict[str, str]]:
    """The tensors a header describes and its metadata, refused unless every entry has a known
    dtype, a shape of non-negative integers, and a byte range of exactly its size inside the
    ``data_size`` bytes of data, overlapping no other tensor's."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map "
                              "names to strings)")
    entries: dict[str, Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape, offsets = info["shape"], info["data_offsets"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}: bad header entry for {name!r} (dtype, shape and "
                                  "data_offsets needed)") from None
        if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
                or not all(_is_size(d, _MAX_DIM) for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has the shape {str(shape)[:80]}: "
                                  f"expected up to {_MAX_DIMS} sizes of 0..{_MAX_DIM}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_size(v, data_size) for v in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file (data_offsets "
                                  f"{str(offsets)[:80]}, {data_size} bytes of data; truncated "
                                  "download?)")
        start, end = offsets
        count = 1
        for d in shape:
            count *= d
        if end - start != count * _itemsize(dtype):
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} ({info['dtype']}) "
                                  f"needs {count * _itemsize(dtype)} bytes, its data_offsets "
                                  f"give {end - start}")
        entries[str(name)] = (dtype, shape, start, end)
    spans = sorted((start, end, name) for name, (_, _, start, end) in entries.items()
                   if end > start)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise CheckpointError(f"{path}: tensors {first!r} and {second!r} overlap in the "
                                  "file (corrupt or crafted header)")
    return entries, {str(k): v for k, v in metadata.items()}


_MAX_DIMS = 16
_MAX_DIM = 2**40


def _is_size(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _read_private(path: Path, base: int, entries: Mapping[str, Entry]) -> dict[str, torch.Tensor]:
    """Each entry's tensor, read from ``path`` into memory of its own: PyTorch's allocation
    is 64-byte aligned, where a view into the file's bytes would lie wherever the file put it
    (8-byte steps). oneDNN's convolution and matrix-product kernels round differently at
    other alignments, so a model loaded from a view would not give the answer of the same
    weights loaded from a ``.pth`` bit for bit."""
    tensors = {}
    with open(path, "rb") as f:
        for name, (dtype, shape, start, end) in sorted(entries.items(), key=lambda e: e[1][2]):
            raw = torch.empty(end - start, dtype=torch.uint8)
            view = memoryview(raw.numpy())  # type: ignore[arg-type]
            f.seek(base + start)
            filled = 0
            while filled < len(view) and (n := f.readinto(view[filled:])):
                filled += n
            if filled < len(view):
                raise CheckpointError(f"{path}: the file shrank while it was read")
            tensors[name] = raw.view(dtype).view(shape)
    return {name: tensors[name] for name in entries}

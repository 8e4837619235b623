"""Reading and writing the safetensors format without extra dependencies.

Layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range in the data section (plus an optional ``__metadata__`` dict of
strings), then the raw little-endian data. Reading copies the file into memory once (no
memory map): a file truncated or rewritten while a model loaded from it runs cannot change its
weights or crash the process with SIGBUS.
"""

from __future__ import annotations

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
    """Memory-map a safetensors file; returns ``(tensors, metadata)``."""
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
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    data = _read_private(path, size)
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            start, end = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: bad header entry for {name!r}") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        count = 1
        for s in shape:
            count *= s
        if end - start != count * itemsize or base + end > size or start < 0:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file "
                                  "(truncated download?)")
        raw = data[base + start:base + end]
        if (base + start) % itemsize:
            raw = raw.clone()  # unaligned in a file written by another tool
        tensors[name] = raw.view(dtype).view(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _read_private(path: Path, size: int) -> torch.Tensor:
    """The first ``size`` bytes of ``path`` in memory of our own."""
    data = torch.empty(size, dtype=torch.uint8)
    view = memoryview(data.numpy())  # type: ignore[arg-type]
    with open(path, "rb") as f:
        filled = 0
        while filled < size and (n := f.readinto(view[filled:])):
            filled += n
    if filled < size:
        raise CheckpointError(f"{path}: the file shrank while it was read")
    return data

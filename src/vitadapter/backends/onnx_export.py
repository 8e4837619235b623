"""ONNX export of the crop-level network, for deployment without PyTorch.

``export_onnx`` writes ``SegmentationModel.forward`` (normalised crops (N, 3, S, S) -> class scores
(N, C, S/4, S/4)) with a static crop size and a dynamic batch axis, traced under
:func:`vitadapter.ops.reference_path` (one standard ``GridSample`` per level for the deformable
attention, explicit attention), so any runtime with opset >= 16 runs it. The file's metadata
makes it self-describing (see :mod:`.onnx_metadata`); models whose weights exceed what
one protobuf may hold keep them in ``<out>.data`` next to the file. DINOv3's RoPE tables are
computed for the crop and stored as constants.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError, MissingDependencyError
from ..modeling.backbones.beit import Attention, relative_position_index
from ..modeling.backbones.dinov3 import RopeEmbedding
from ..modeling.segmentor import SegmentationModel
from ..ops import reference_path
from .base import ModelInfo
from .onnx_metadata import DEFAULT_OPSET, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, write_metadata

logger = logging.getLogger(__name__)

# Weights above this size go to an external data file (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1536 * 2**20
DATA_ALIGNMENT = 4096


def external_data_path(out: str | Path) -> Path:
    """Where the weights of a large model go: ``<out>.data`` next to the ONNX file."""
    out = Path(out)
    return out.with_name(out.name + ".data")


def export_onnx(model: SegmentationModel, out: str | Path, *, opset: int = DEFAULT_OPSET,
                force: bool = False, weights: str = "unknown") -> Path:
    """Export ``model`` (weights loaded) to ``out`` and return its path.

    ``weights`` is recorded in the metadata (e.g. the checkpoint's file name, or "random").
    The file is written under a temporary name and renamed when complete; an existing ``out``
    is an error unless ``force``.
    """
    onnx = _import_onnx()
    out = Path(out)
    _check_request(model, out, opset, force)
    metadata = write_metadata(ModelInfo.of(model.config, model.classes, model.palette), weights)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise ExportError(f"cannot write into {out.parent}: {exc.strerror or exc}") from None
    try:
        (tmp / "trace").mkdir()  # the exporter's files, apart from ours
        traced = tmp / "trace" / "model.onnx"
        _trace(model, traced, opset)
        gc.collect()  # the tracer's copies of the weights
        staged = tmp / out.name
        data = external_data_path(out)
        external = package(traced, staged, metadata, data.name)
        try:
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported graph fails the ONNX checker: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        if external:
            os.replace(staged.with_name(data.name), data)
        elif data.exists() and force:
            data.unlink()  # a stale weight file of the model being replaced
        os.replace(staged, out)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def package(traced: str | Path, staged: str | Path, metadata: dict[str, str],
            data_name: str) -> bool:
    """Rewrite the exporter's file ``traced`` (weights inline, or one file per tensor for
    models over 2 GB) as ``staged`` with ``metadata``; weights above
    :data:`EXTERNAL_DATA_BYTES` in all go to one file ``data_name`` next to it, copied one
    tensor at a time so that the weights are never all in memory twice. Returns whether
    they did."""
    onnx = _import_onnx()
    traced, staged = Path(traced), Path(staged)
    proto = onnx.load(str(traced), load_external_data=False)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    tensors = proto.graph.initializer
    external = sum(_stored_bytes(t, traced.parent) for t in tensors) > EXTERNAL_DATA_BYTES
    with open(staged.with_name(data_name), "wb") if external else nullcontext() as sink:
        for tensor in tensors:
            if tensor.data_type == onnx.TensorProto.STRING:
                continue
            raw = _tensor_bytes(tensor, traced.parent)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            if sink is None or len(raw) <= 1024:
                tensor.raw_data = raw
                continue
            tensor.ClearField("raw_data")
            offset = -(-sink.tell() // DATA_ALIGNMENT) * DATA_ALIGNMENT  # page-aligned: mmap
            sink.seek(offset)
            sink.write(raw)
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(proto, str(staged))
    return external


def _stored_bytes(tensor: Any, folder: Path) -> int:
    """A tensor's size in bytes, inline or in its external file (PyTorch's exporter writes one
    file per tensor without a "length" entry)."""
    info = {e.key: e.value for e in tensor.external_data}
    if "location" not in info:
        return len(tensor.raw_data)
    if "length" in info:
        return int(info["length"])
    return (folder / info["location"]).stat().st_size - int(info.get("offset", 0))


def _tensor_bytes(tensor: Any, folder: Path) -> bytes:
    """A tensor's little-endian bytes, read from its external file when it has one."""
    info = {e.key: e.value for e in tensor.external_data}
    if "location" in info:
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info["length"])) if "length" in info else f.read()
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)  # typed fields (int64_data, ...)
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def verify_export(model: SegmentationModel, path: str | Path, *, seed: int = 0) -> float:
    """Run one random crop through ``model`` (reference path) and through onnxruntime on
    ``path``; return max |difference| / max |PyTorch score|."""
    import numpy as np

    from .onnx import OnnxRunner

    size = model.crop_size
    crop = np.random.default_rng(seed).normal(size=(1, 3, size, size)).astype(np.float32)
    device = next(model.parameters()).device
    with reference_path(), torch.inference_mode():
        expected = model(torch.from_numpy(crop).to(device)).float().cpu().numpy()
    actual = OnnxRunner.load(path)(crop)
    scale = float(np.abs(expected).max())
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else 0.0


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "exporting to ONNX needs the onnx package: pip install 'vitadapter[export]'"
        ) from None
    return onnx


def max_opset() -> int:
    """The newest opset the TorchScript-based exporter of this PyTorch writes."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:  # a private name: assume the newest opset of torch 2.x
        return 20
    return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def _check_request(model: SegmentationModel, out: Path, opset: int, force: bool) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the deformable attention needs "
                          f"GridSample, which ONNX has from opset {MIN_OPSET}")
    newest = max_opset()
    if opset > newest:
        raise ExportError(f"opset {opset} is newer than this PyTorch's ONNX exporter writes "
                          f"(at most {newest})")
    params = list(model.parameters())
    if any(p.is_meta for p in params):
        raise ExportError("the model has no weights (built on the meta device); load a "
                          "checkpoint first")
    if any(p.dtype != torch.float32 for p in params):
        raise ExportError("export the float32 model (model.float()); its dtype is "
                          f"{params[0].dtype}")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} is not a directory")
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give the .onnx file to write")
    if not force:
        for path in (out, external_data_path(out)):
            if path.exists():
                raise ExportError(f"{path} already exists; choose another name or pass "
                                  "--force (force=True) to overwrite it")


def _trace(model: SegmentationModel, path: Path, opset: int) -> None:
    size = model.crop_size
    device = next(model.parameters()).device
    example = torch.zeros(1, model.config.backbone.in_channels, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        with (reference_path(), torch.no_grad(), _runtime_bias_gather(model, example),
              _constant_rope(model, size), warnings.catch_warnings()):
            warnings.simplefilter("ignore")  # tracer notes on shape checks baked in as constants
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True)
    except (RuntimeError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the ONNX exporter failed at opset {opset}: {message}") from None
    finally:
        model.train(was_training)


@contextmanager
def _constant_rope(model: SegmentationModel, size: int) -> Iterator[None]:
    """DINOv3's RoPE tables for the export's crop, computed before the trace so that the graph
    holds them as constants (no Range/Sin/Cos of the token grid for a runtime to compile)."""
    ropes = [m for m in model.modules() if isinstance(m, RopeEmbedding)]
    grid = size // model.config.backbone.patch_size
    for rope in ropes:
        tables = rope(grid, grid)
        rope.forward = lambda height, width, tables=tables: tables  # type: ignore[method-assign, misc]
    try:
        yield
    finally:
        for rope in ropes:
            del rope.forward  # the class's method again


@contextmanager
def _runtime_bias_gather(model: nn.Module, example: torch.Tensor) -> Iterator[None]:
    """Keep BEiT's relative-position gather a run-time op in the traced graph.

    With a constant index the exporter and onnxruntime fold each block's bias into a
    (heads, N+1, N+1) constant: 15 GB for the 24 blocks of a 896 model. An index tied to the
    traced input (+0) keeps one small table per block and a Gather.
    """
    from torch.onnx.operators import shape_as_tensor

    def traced_bias(block: Attention) -> torch.Tensor:
        # Runs inside the trace, where ``example`` is the graph's input.
        zero = shape_as_tensor(example)[0] * 0
        index = relative_position_index(block.window, example.device) + zero
        return Attention.relative_position_bias(block, index)

    blocks = [m for m in model.modules()
              if isinstance(m, Attention) and m.relative_position_bias_table is not None]
    for block in blocks:
        block.relative_position_bias = partial(traced_bias, block)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            del block.relative_position_bias  # the class's method again

"""The onnxruntime backend: an ONNX file written by ``vitadapter export-onnx`` as a crop runner.

Needs only numpy and onnxruntime (``pip install vitadapter[onnx]``); torch is never imported.
The file is self-describing (:mod:`.onnx_metadata`), so the Segmenter around it runs the same
pipeline as the PyTorch backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingDependencyError, OnnxModelError
from .onnx_metadata import INPUT_NAME, OUTPUT_NAME, OnnxMetadata, read_metadata


def import_onnxruntime() -> Any:
    """``onnxruntime``, or a clear error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "the ONNX backend needs onnxruntime: pip install 'vitadapter[onnx]'") from None
    return onnxruntime


class OnnxRunner:
    """Runs batches of normalised crops (N, 3, S, S) float32 through an onnxruntime session
    and returns the class scores (N, C, S/4, S/4) float32, or (N, C, S, S) for the dinov3
    pipeline (see :class:`~.base.CropRunner`)."""

    def __init__(self, session: Any, metadata: OnnxMetadata, source: str = "model") -> None:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise OnnxModelError(f"{source}: expected input {INPUT_NAME!r} and output "
                                 f"{OUTPUT_NAME!r}, found {inputs} -> {outputs}")
        self.session = session
        self.source = source
        # The crop size the graph was traced for, where it is fixed.
        spatial = tuple(session.get_inputs()[0].shape[2:])
        self.crop_shape = spatial if all(isinstance(d, int) for d in spatial) else None
        self.metadata = metadata
        self.info = metadata.info
        self.providers: list[str] = session.get_providers()
        self.device = f"onnxruntime:{self.providers[0]}"

    @classmethod
    def load(cls, path: str | Path, providers: Sequence[str] | None = None,
             threads: int | None = None) -> OnnxRunner:
        """An onnxruntime session on ``path`` (a file written by ``vitadapter export-onnx``);
        ``providers`` default to the CPU, ``threads`` sets the intra-op threads."""
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise OnnxModelError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise ConfigError(f"onnxruntime provider(s) {', '.join(unknown)} not available; "
                              f"this onnxruntime has {', '.join(available)}")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxModelError(f"{path}: onnxruntime cannot load it: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        metadata = read_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        return cls(session, metadata, str(path))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if self.crop_shape is not None and tuple(crops.shape[2:]) != self.crop_shape:
            height, width = self.crop_shape
            raise OnnxModelError(
                f"{self.source} takes {height}x{width} crops only, and this image needs a "
                f"{crops.shape[2]}x{crops.shape[3]} window (the dinov3 pipeline's test-time "
                "augmentation shrinks images below the crop at ratios under 1): run it "
                "without TTA, or with the PyTorch backend")
        batch = np.ascontiguousarray(crops, dtype=np.float32)
        (scores,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(scores, dtype=np.float32)

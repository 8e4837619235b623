"""The onnxruntime backend: an ONNX file written by ``vitadapter export-onnx`` as a crop runner.

Needs only numpy and onnxruntime (``pip install vitadapter[onnx]``); torch is never imported.
The file is self-describing: its ``metadata_props`` hold the model config, class names, palette
and preprocessing (see :data:`METADATA_KEYS`), so the Segmenter around it runs the same
pipeline as the PyTorch backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig, config_from_dict
from .errors import ConfigError, MissingDependencyError, OnnxModelError

# Value of the ``vitadapter.format`` entry; the version is bumped on incompatible changes.
FORMAT = "vitadapter-segmentor"
FORMAT_VERSION = 1
INPUT_NAME = "crops"
OUTPUT_NAME = "scores"
# The metadata entries every exported file carries (JSON values unless noted).
METADATA_KEYS = (
    "vitadapter.format",          # FORMAT (plain string)
    "vitadapter.format_version",  # FORMAT_VERSION
    "vitadapter.version",         # package version that wrote the file (plain string)
    "vitadapter.config",          # ModelConfig.to_dict()
    "vitadapter.classes",         # class names, index = output channel
    "vitadapter.palette",         # [[r, g, b], ...] per class
    "vitadapter.preprocessing",   # mean, std, to_rgb, img_scale, size_divisor
    "vitadapter.crop_size",       # [h, w] of one input crop
    "vitadapter.stride",          # [h, w] of the slide windows
    "vitadapter.num_classes",
    "vitadapter.dtype",           # "fp32"
    "vitadapter.weights",         # checkpoint file name, or "random"
)


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself."""

    config: ModelConfig
    classes: tuple[str, ...]
    palette: np.ndarray  # (num_classes, 3) uint8
    dtype: str
    weights: str
    version: str


def read_metadata(props: Mapping[str, str], source: str = "model") -> OnnxMetadata:
    """Parse the ``metadata_props`` of an exported file; :class:`OnnxModelError` for a file
    that is not one of ours or is damaged."""
    if props.get("vitadapter.format") != FORMAT:
        raise OnnxModelError(
            f"{source} was not exported by `vitadapter export-onnx` (its metadata has no "
            f"'vitadapter.format' = {FORMAT!r} entry); export the model with "
            "`vitadapter export-onnx`")
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise OnnxModelError(f"{source}: metadata entries missing: {', '.join(missing)}")
    try:
        version = int(props["vitadapter.format_version"])
        if version > FORMAT_VERSION:
            raise OnnxModelError(
                f"{source} has format version {version}; this vitadapter reads up to "
                f"{FORMAT_VERSION}: upgrade vitadapter")
        config = config_from_dict(json.loads(props["vitadapter.config"]))
        classes = tuple(str(c) for c in json.loads(props["vitadapter.classes"]))
        palette = np.asarray(json.loads(props["vitadapter.palette"]), np.uint8).reshape(-1, 3)
    except (ValueError, TypeError, ConfigError) as exc:
        if isinstance(exc, OnnxModelError):
            raise
        raise OnnxModelError(f"{source}: unreadable vitadapter metadata: {exc}") from None
    if len(classes) != config.num_classes or len(palette) != config.num_classes:
        raise OnnxModelError(f"{source}: metadata names {len(classes)} classes and "
                             f"{len(palette)} colours for {config.num_classes} outputs")
    return OnnxMetadata(config, classes, palette, props["vitadapter.dtype"],
                        props["vitadapter.weights"], props["vitadapter.version"])


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
    and returns the class scores (N, C, S/4, S/4) float32."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
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
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxModelError(f"{path}: onnxruntime cannot load it: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map,
                                      str(path))
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise OnnxModelError(f"{path}: expected input {INPUT_NAME!r} and output "
                                 f"{OUTPUT_NAME!r}, found {inputs} -> {outputs}")
        self.path = path
        self.providers: list[str] = self.session.get_providers()
        self.device = f"onnxruntime:{self.providers[0]}"

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(crops, dtype=np.float32)
        (scores,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(scores, dtype=np.float32)

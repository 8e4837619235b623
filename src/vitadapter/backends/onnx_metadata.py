"""The metadata that makes an exported ONNX file self-describing: written by
:mod:`.onnx_export`, read by :mod:`.onnx` (numpy only)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..config.parse import config_from_dict
from ..errors import ConfigError, OnnxModelError
from .base import ModelInfo

# Value of the ``vitadapter.format`` entry; the version is bumped on incompatible changes.
FORMAT = "vitadapter-segmentor"
FORMAT_VERSION = 1
INPUT_NAME = "crops"
MIN_OPSET = 16  # GridSample
DEFAULT_OPSET = 17
OUTPUT_NAME = "scores"
# The metadata entries every exported file carries (JSON values unless noted).
METADATA_KEYS = (
    "vitadapter.format",          # FORMAT (plain string)
    "vitadapter.format_version",  # FORMAT_VERSION
    "vitadapter.version",         # package version that wrote the file (plain string)
    "vitadapter.config",          # ModelConfig.to_dict()
    "vitadapter.classes",         # class names, index = output channel
    "vitadapter.palette",         # [[r, g, b], ...] per class
    "vitadapter.preprocessing",   # pipeline, mean, std, to_rgb, img_scale, size_divisor,
                                  # short_side
    "vitadapter.crop_size",       # [h, w] of one input crop
    "vitadapter.stride",          # [h, w] of the slide windows
    "vitadapter.num_classes",
    "vitadapter.dtype",           # "fp32"
    "vitadapter.weights",         # checkpoint file name, or "random"
)


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself."""

    info: ModelInfo
    dtype: str
    weights: str
    version: str


def write_metadata(info: ModelInfo, weights: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: everything the onnxruntime backend needs to
    rebuild the pipeline (``weights``: the checkpoint's file name, or "random")."""
    cfg = info.config
    inference = cfg.inference
    preprocessing = {"pipeline": inference.pipeline, "mean": list(inference.mean),
                     "std": list(inference.std), "to_rgb": inference.to_rgb,
                     "img_scale": list(inference.img_scale),
                     "size_divisor": inference.size_divisor, "short_side": inference.short_side}
    values: dict[str, Any] = {
        "vitadapter.format_version": FORMAT_VERSION,
        "vitadapter.config": cfg.to_dict(),
        "vitadapter.classes": list(info.classes),
        "vitadapter.palette": info.palette.tolist(),
        "vitadapter.preprocessing": preprocessing,
        "vitadapter.crop_size": list(inference.crop_size),
        "vitadapter.stride": list(inference.stride),
        "vitadapter.num_classes": cfg.num_classes,
        "vitadapter.dtype": "fp32",
    }
    metadata = {"vitadapter.format": FORMAT, "vitadapter.version": __version__,
                "vitadapter.weights": weights}
    metadata.update({k: json.dumps(v) for k, v in values.items()})
    return metadata


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
        palette = json.loads(props["vitadapter.palette"])
        if len(classes) != config.num_classes or len(palette) != config.num_classes:
            raise OnnxModelError(f"{source}: metadata names {len(classes)} classes and "
                                 f"{len(palette)} colours for {config.num_classes} outputs")
        info = ModelInfo.of(config, classes, palette)
    except (ValueError, TypeError, ConfigError, RecursionError) as exc:
        if isinstance(exc, OnnxModelError):
            raise
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise OnnxModelError(f"{source}: unreadable vitadapter metadata: {reason}") from None
    return OnnxMetadata(info, props["vitadapter.dtype"], props["vitadapter.weights"],
                        props["vitadapter.version"])

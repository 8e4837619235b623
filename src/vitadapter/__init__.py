"""vitadapter: ViT-Adapter + Mask2Former semantic segmentation in pure PyTorch.

Names are imported lazily, so that ``from vitadapter import Segmenter`` with the ONNX backend
never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "build",
    "resolve_config": "build",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "convert_to_safetensors": "checkpoint",
    "ModelConfig": "config",
    "VitAdapterError": "errors",
    "ConfigError": "errors",
    "CheckpointError": "errors",
    "ImageError": "errors",
    "PRESETS": "presets",
    "get_preset": "presets",
    "Segmenter": "predictor",
    "SegmentationResult": "result",
    "export_onnx": "export",
}

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "ImageError",
    "ModelConfig",
    "SegmentationResult",
    "Segmenter",
    "VitAdapterError",
    "build_model",
    "convert_to_safetensors",
    "export_onnx",
    "get_preset",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_config",
]

if TYPE_CHECKING:
    from .build import build_model, resolve_config
    from .checkpoint import convert_to_safetensors, load_checkpoint, read_checkpoint
    from .config import ModelConfig
    from .errors import CheckpointError, ConfigError, ImageError, VitAdapterError
    from .export import export_onnx
    from .predictor import Segmenter
    from .presets import PRESETS, get_preset
    from .result import SegmentationResult


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitadapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

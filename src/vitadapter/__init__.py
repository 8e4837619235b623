"""vitadapter: ViT-Adapter + Mask2Former semantic segmentation in pure PyTorch.

Names are imported lazily, so that ``from vitadapter import Segmenter`` with the ONNX backend
never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "modeling.build",
    "resolve_config": "modeling.build",
    "load_checkpoint": "weights.checkpoint",
    "read_checkpoint": "weights.checkpoint",
    "convert_to_safetensors": "weights.checkpoint",
    "ModelConfig": "config.schema",
    "VitAdapterError": "errors",
    "ConfigError": "errors",
    "CheckpointError": "errors",
    "ImageError": "errors",
    "PRESETS": "config.presets",
    "get_preset": "config.presets",
    "Segmenter": "segmenter",
    "SegmentationResult": "pipeline.result",
    "export_onnx": "backends.onnx_export",
    "keep_freed_memory": "backends.host_memory",
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
    "keep_freed_memory",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_config",
]

if TYPE_CHECKING:
    from .backends.host_memory import keep_freed_memory
    from .backends.onnx_export import export_onnx
    from .config.presets import PRESETS, get_preset
    from .config.schema import ModelConfig
    from .errors import CheckpointError, ConfigError, ImageError, VitAdapterError
    from .modeling.build import build_model, resolve_config
    from .pipeline.result import SegmentationResult
    from .segmenter import Segmenter
    from .weights.checkpoint import convert_to_safetensors, load_checkpoint, read_checkpoint


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitadapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

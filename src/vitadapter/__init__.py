"""vitadapter: ViT-Adapter + Mask2Former semantic segmentation in pure PyTorch."""

from .build import build_model, resolve_config
from .checkpoint import convert_to_safetensors, load_checkpoint, read_checkpoint
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, VitAdapterError
from .presets import PRESETS, get_preset

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "VitAdapterError",
    "build_model",
    "convert_to_safetensors",
    "get_preset",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_config",
]

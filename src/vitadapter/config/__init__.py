"""Model configuration: typed dataclasses (:mod:`.schema`), the named presets (:mod:`.presets`)
and the readers of our JSON layout (:mod:`.parse`) and of official mmcv configs (:mod:`.mmcv`)."""

from .parse import config_from_dict, load_config_file
from .presets import PRESETS, SEED_PRESET, get_preset
from .schema import (
    BEHAVIOURS,
    BackboneConfig,
    Behaviour,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    PixelDecoderConfig,
    TransformerDecoderConfig,
)

__all__ = [
    "BEHAVIOURS",
    "PRESETS",
    "SEED_PRESET",
    "BackboneConfig",
    "Behaviour",
    "HeadConfig",
    "InferenceConfig",
    "ModelConfig",
    "PixelDecoderConfig",
    "TransformerDecoderConfig",
    "config_from_dict",
    "get_preset",
    "load_config_file",
]

"""``build_model``: a :class:`SegmentationModel` from a preset, config object, dict or JSON file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import Behaviour, ModelConfig, config_from_dict, get_preset, load_config_file
from .segmentor import SegmentationModel

ConfigLike = str | Path | ModelConfig | Mapping[str, Any]


def resolve_config(cfg: ConfigLike, behaviour: Behaviour | None = None) -> ModelConfig:
    """Turn a preset name, a config file path, a dict or a :class:`ModelConfig` into a
    :class:`ModelConfig`, optionally switching the adapter behaviour."""
    if isinstance(cfg, ModelConfig):
        config = cfg
    elif isinstance(cfg, Mapping):
        config = config_from_dict(cfg)
    elif isinstance(cfg, Path) or str(cfg).endswith(".json") or Path(str(cfg)).is_file():
        config = load_config_file(cfg)
    else:
        config = get_preset(str(cfg))
    if behaviour is not None and behaviour != config.behaviour:
        config = config.replace(behaviour=behaviour)
    return config


def build_model(cfg: ConfigLike, *, behaviour: Behaviour | None = None,
                device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None) -> SegmentationModel:
    """Build the network in eval mode.

    ``device="meta"`` builds a weightless skeleton in no time (what :func:`load_checkpoint`
    fills by assignment); any other device gets PyTorch's default random initialisation.
    """
    config = resolve_config(cfg, behaviour)
    with torch.device(device):
        model = SegmentationModel(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()

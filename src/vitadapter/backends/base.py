"""What every backend is: a *crop runner* that turns normalised crops into class scores, and
the :class:`ModelInfo` the pipeline around it needs (config, class names, palette).

numpy only: the ONNX backend and the pipeline import this without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..config.schema import ModelConfig
from ..errors import ConfigError
from ..pipeline.classes import dataset_info, replace_known_defective


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model's configuration (architecture, crop, preprocessing) with the class names
    and palette its outputs mean."""

    config: ModelConfig
    classes: tuple[str, ...]
    palette: np.ndarray  # (num_classes, 3) uint8

    @classmethod
    def of(cls, config: ModelConfig, classes: Sequence[str] | None = None,
           palette: Sequence[Sequence[int]] | np.ndarray | None = None) -> ModelInfo:
        """The model's info, with the dataset's names and palette where the checkpoint gives
        none; :class:`ConfigError` when a given list does not fit the number of classes."""
        info = dataset_info(config.dataset, config.num_classes)
        if classes is not None and len(classes) != config.num_classes:
            raise ConfigError(f"the checkpoint names {len(classes)} classes, the model "
                              f"predicts {config.num_classes}")
        colours = (replace_known_defective(_palette(palette)) if palette is not None
                   else info.palette_array())
        if len(colours) != config.num_classes:
            raise ConfigError(f"the palette has {len(colours)} colours for "
                              f"{config.num_classes} classes")
        return cls(config, tuple(classes) if classes else info.classes, colours)


class CropRunner(Protocol):
    """A backend: runs a batch of normalised crops to per-class scores, float32, on ``device``.

    mmseg pipeline (``info.config.inference.pipeline``): crops (N, 3, S, S), S the test crop,
    to scores (N, C, S/4, S/4) (Mask2Former's class x mask scores, UperNet's logits).
    dinov3 pipeline: crops (N, 3, h, w), h and w multiples of 32 and not necessarily square
    (windows of an image smaller than the crop in one dimension), to scores (N, C, h, w) at the
    crop's own size (Meta's per-crop combination,
    :func:`vitadapter.modeling.heads.mask2former.crop_scores`).

    A backend may also have ``slide_merge(views, crop, stride, batch_windows) -> LabelMap``
    (the PyTorch one does): the Segmenter then leaves the windows and the merge to it, on its
    device, instead of the numpy merge."""

    device: str
    info: ModelInfo

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


def _palette(values: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """``values`` as (N, 3) uint8 colours; :class:`ConfigError` for anything else."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        array = np.asarray([])
    if (array.ndim != 2 or array.shape[1:] != (3,) or not np.issubdtype(array.dtype, np.integer)
            or (array.size and (array.min() < 0 or array.max() > 255))):
        raise ConfigError("the palette (of the checkpoint or model file) must be [r, g, b] "
                          "triples of integers 0..255, one per class")
    return array.astype(np.uint8)

"""Meta's DINOv3 segmentation test pipeline as an :class:`InferenceConfig`: the settings of
Meta's ADE20K Mask2Former evaluation (``config-ade20k-m2f-inference.yaml``) and the reader of
the ``pipeline`` section of a DINOv3 reference set's config.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .fields import FieldReader
from .schema import InferenceConfig

# Meta's eval transforms: short side img_size (896), slide crop 896 / stride 596, TTA ratios.
META_SHORT_SIDE = 896
META_CROP = 896
META_STRIDE = 596
META_TTA_RATIOS: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
# Fields of a reference set's pipeline section that describe what the others imply (the resize
# rule, the windows it gives, the combination) rather than set anything.
_DESCRIPTIVE = ("stride_rule", "resize", "single_scale", "tta", "combination")


def dinov3_inference(short_side: int = META_SHORT_SIDE, crop: int = META_CROP,
                     stride: int = META_STRIDE, **changes: Any) -> InferenceConfig:
    """Meta's test pipeline (``pipeline="dinov3"``) with its ADE20K settings by default."""
    settings: dict[str, Any] = {"tta_ratios": META_TTA_RATIOS, **changes}
    return InferenceConfig(pipeline="dinov3", short_side=short_side, crop_size=(crop, crop),
                           stride=(stride, stride), **settings)


def inference_from_meta(section: Mapping[str, Any], where: str = "pipeline") -> InferenceConfig:
    """The ``pipeline`` section of a DINOv3 reference set's config.json (``img_size``,
    ``crop_size``, ``stride``, ``tta_ratios``, ``mean``, ``std``) as an InferenceConfig;
    :class:`~vitadapter.errors.ConfigError` names a missing or unknown field."""
    f = FieldReader(section, where)
    f.ignore(*_DESCRIPTIVE)
    config = InferenceConfig(
        pipeline="dinov3", short_side=f.require("img_size"), crop_size=_numbers(f, "crop_size"),
        stride=_numbers(f, "stride"), tta_ratios=_numbers(f, "tta_ratios"),
        mean=_numbers(f, "mean"), std=_numbers(f, "std"))
    f.done()
    return config


def _numbers(f: FieldReader, key: str) -> Any:
    """A list of numbers as a tuple (the ModelConfig checks the values)."""
    value = f.require(key)
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"'{f.path(key)}' must be a list of numbers, got {value!r}")
    return tuple(value)

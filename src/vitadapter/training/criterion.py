"""The training loss of a model, chosen by its decode head's type.

A criterion maps (model, images (B, 3, S, S), label maps (B, S, S) int64 with 255 = ignore) to
the named loss terms whose sum is minimised. :data:`CRITERIA` maps a head class to the builder
of its criterion: Mask2Former's deep-supervised set loss, UperNet's pixel cross-entropy (plus
the auxiliary FCN head's, weight 0.4). ``autocast`` (a context factory, e.g. bf16
autocast) wraps the model's forward only: the losses are computed in float32 outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import UperNetConfig
from ..data.datasets import IGNORE_INDEX
from ..errors import ConfigError
from ..modeling.heads.mask2former import Mask2FormerHead
from ..modeling.heads.upernet import UperNetHead
from ..modeling.segmentor import SegmentationModel
from .losses import Mask2FormerLoss, Mask2FormerLossConfig
from .point_sampling import PointSource, SamplePoints
from .targets import masks_from_semantic


class Criterion(Protocol):
    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]: ...


Draw = PointSource | SamplePoints
Autocast = Callable[[], AbstractContextManager[object]]


class Mask2FormerCriterion:
    """Deep-supervised Mask2Former loss on the ``ToMask`` targets of each label map; the keys
    are the official segmentor's (``decode.loss_cls``, ``decode.d0.loss_mask``, ...)."""

    def __init__(self, config: Mask2FormerLossConfig, draw: Draw,
                 autocast: Autocast = contextlib.nullcontext) -> None:
        self.loss = Mask2FormerLoss(config, draw=draw)
        self.autocast = autocast

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        with self.autocast():
            features = model.get_submodule("backbone")(images)
            head = model.get_submodule("decode_head")(features)
        targets = [masks_from_semantic(label) for label in labels]
        with torch.autocast(images.device.type, enabled=False):
            losses = self.loss([c.float() for c in head.cls_logits],
                               [m.float() for m in head.mask_logits],
                               [t[0] for t in targets], [t[1] for t in targets])
        return {f"decode.{name}": value for name, value in losses.items()}


class UperNetCriterion:
    """mmseg 0.x's UperNet loss: the decode head's logits resized bilinearly to the labels and
    cross-entropy with 255 ignored, averaged over *all* pixels (mmseg's ``avg_non_ignore=False``
    default: ignored pixels count as zeros), plus the same on the auxiliary FCN head's logits
    times its ``loss_weight`` (0.4); keys as the official segmentor's (``decode.loss_ce``,
    ``aux.loss_ce``)."""

    def __init__(self, aux_weight: float | None,
                 autocast: Autocast = contextlib.nullcontext) -> None:
        self.aux_weight = aux_weight
        self.autocast = autocast

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        with self.autocast():
            features = model.get_submodule("backbone")(images)
            logits = model.get_submodule("decode_head")(features).logits
            aux = (model.get_submodule("auxiliary_head")(features)
                   if self.aux_weight is not None else None)
        with torch.autocast(images.device.type, enabled=False):
            losses = {"decode.loss_ce": pixel_cross_entropy(logits.float(), labels)}
            if aux is not None and self.aux_weight is not None:
                losses["aux.loss_ce"] = self.aux_weight * pixel_cross_entropy(aux.float(),
                                                                              labels)
        return losses


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, C, h, w) logits resized to the (B, H, W) labels, 255 ignored, the
    mean taken over every pixel as mmseg 0.x does by default."""
    resized = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                            align_corners=False)
    return F.cross_entropy(resized, labels, ignore_index=IGNORE_INDEX, reduction="none").mean()


def _upernet(model: nn.Module, draw: Draw, num_points: int, autocast: Autocast) -> Criterion:
    head = model.config.head if isinstance(model, SegmentationModel) else None
    aux = head.auxiliary if isinstance(head, UperNetConfig) else None
    return UperNetCriterion(aux.loss_weight if aux is not None else None, autocast)


def _mask2former(model: nn.Module, draw: Draw, num_points: int,
                 autocast: Autocast) -> Criterion:
    defaults = Mask2FormerLossConfig()
    config = replace(defaults, num_points=num_points,
                     matcher=replace(defaults.matcher, num_points=num_points))
    return Mask2FormerCriterion(config, draw, autocast)


CriterionBuilder = Callable[[nn.Module, Draw, int, Autocast], Criterion]
CRITERIA: dict[type[nn.Module], CriterionBuilder] = {Mask2FormerHead: _mask2former,
                                                     UperNetHead: _upernet}


def criterion_for(model: nn.Module, draw: Draw, num_points: int = 12544,
                  autocast: Autocast = contextlib.nullcontext) -> Criterion:
    """The official training loss of ``model``'s decode head (``num_points``: the points of
    the Mask2Former mask losses and matcher; ``autocast``: the model forward's precision)."""
    head = model.get_submodule("decode_head")
    for head_type, build in CRITERIA.items():
        if isinstance(head, head_type):
            return build(model, draw, num_points, autocast)
    raise ConfigError(f"no training loss for a {type(head).__name__} decode head yet")

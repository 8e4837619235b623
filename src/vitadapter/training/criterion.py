"""The training loss of a model, chosen by its decode head's type.

A criterion maps (model, images (B, 3, S, S), label maps (B, S, S) int64 with 255 = ignore) to
the named loss terms whose sum is minimised. :data:`CRITERIA` maps a head class to the builder
of its criterion; a new head (e.g. UperNet: cross-entropy on the decode head plus the auxiliary
FCN head with weight 0.4) registers its own there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..modeling.heads.mask2former import Mask2FormerHead
from .losses import Mask2FormerLoss, Mask2FormerLossConfig
from .point_sampling import PointSource
from .targets import masks_from_semantic


class Criterion(Protocol):
    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]: ...


class Mask2FormerCriterion:
    """Deep-supervised Mask2Former loss on the ``ToMask`` targets of each label map; the keys
    are the official segmentor's (``decode.loss_cls``, ``decode.d0.loss_mask``, ...)."""

    def __init__(self, config: Mask2FormerLossConfig, draw: PointSource) -> None:
        self.loss = Mask2FormerLoss(config, draw=draw)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        features = model.get_submodule("backbone")(images)
        head = model.get_submodule("decode_head")(features)
        targets = [masks_from_semantic(label) for label in labels]
        losses = self.loss(head.cls_logits, head.mask_logits, [t[0] for t in targets],
                           [t[1] for t in targets])
        return {f"decode.{name}": value for name, value in losses.items()}


def _mask2former(model: nn.Module, draw: PointSource, num_points: int) -> Criterion:
    defaults = Mask2FormerLossConfig()
    config = replace(defaults, num_points=num_points,
                     matcher=replace(defaults.matcher, num_points=num_points))
    return Mask2FormerCriterion(config, draw)


CriterionBuilder = Callable[[nn.Module, PointSource, int], Criterion]
CRITERIA: dict[type[nn.Module], CriterionBuilder] = {Mask2FormerHead: _mask2former}


def criterion_for(model: nn.Module, draw: PointSource, num_points: int = 12544) -> Criterion:
    """The official training loss of ``model``'s decode head (``num_points``: the points of
    the Mask2Former mask losses and matcher)."""
    head = model.get_submodule("decode_head")
    for head_type, build in CRITERIA.items():
        if isinstance(head, head_type):
            return build(model, draw, num_points)
    raise ConfigError(f"no training loss for a {type(head).__name__} decode head yet")

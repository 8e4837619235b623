"""The training loss of a model, chosen by its decode head's type.

A criterion maps (model, images (B, 3, S, S), label maps (B, S, S) int64 with 255 = ignore) to
the named loss terms whose sum is minimised. :data:`CRITERIA` maps a head class to the builder
of its criterion; a new head (e.g. UperNet: cross-entropy on the decode head plus the auxiliary
FCN head with weight 0.4) registers its own there. ``autocast`` (a context factory, e.g. bf16
autocast) wraps the model's forward only: the losses are computed in float32 outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..modeling.heads.mask2former import Mask2FormerHead
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


def _mask2former(model: nn.Module, draw: Draw, num_points: int,
                 autocast: Autocast) -> Criterion:
    defaults = Mask2FormerLossConfig()
    config = replace(defaults, num_points=num_points,
                     matcher=replace(defaults.matcher, num_points=num_points))
    return Mask2FormerCriterion(config, draw, autocast)


CriterionBuilder = Callable[[nn.Module, Draw, int, Autocast], Criterion]
CRITERIA: dict[type[nn.Module], CriterionBuilder] = {Mask2FormerHead: _mask2former}


def criterion_for(model: nn.Module, draw: Draw, num_points: int = 12544,
                  autocast: Autocast = contextlib.nullcontext) -> Criterion:
    """The official training loss of ``model``'s decode head (``num_points``: the points of
    the Mask2Former mask losses and matcher; ``autocast``: the model forward's precision)."""
    head = model.get_submodule("decode_head")
    for head_type, build in CRITERIA.items():
        if isinstance(head, head_type):
            return build(model, draw, num_points, autocast)
    raise ConfigError(f"no training loss for a {type(head).__name__} decode head yet")

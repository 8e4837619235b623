"""The whole network on one normalised crop: backbone, head, semantic scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .adapter import BEiTAdapter
from .mask2former_head import HeadOutput, Mask2FormerHead, semantic_scores


@dataclass
class SegmentorOutput:
    """Intermediate results of one forward pass, for inspection and parity checks."""

    features: list[torch.Tensor]  # backbone maps at 1/4, 1/8, 1/16, 1/32
    head: HeadOutput
    scores: torch.Tensor          # (B, num_classes, H/4, W/4)


class Segmentor(nn.Module):
    """BEiT-Adapter + Mask2Former (the official ``EncoderDecoderMask2Former``).

    ``forward`` maps a normalised crop (B, 3, S, S), S = ``config.backbone.img_size``, to
    per-class semantic scores (B, num_classes, S/4, S/4); ``inspect`` also returns the backbone
    features and every prediction of the decoder.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Class names and palette of the loaded checkpoint's ``meta``, when it has them.
        self.classes: list[str] | None = None
        self.palette: list[list[int]] | None = None
        self.backbone = BEiTAdapter(config.backbone, config.behaviour)
        self.decode_head = Mask2FormerHead(config.head)

    @property
    def crop_size(self) -> int:
        return self.config.backbone.img_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return self.inspect(crop).scores

    def inspect(self, crop: torch.Tensor) -> SegmentorOutput:
        self._check_input(crop)
        features = self.backbone(crop)
        head = self.decode_head(features)
        return SegmentorOutput(features, head,
                               semantic_scores(head.cls_logits[-1], head.mask_logits[-1]))

    def _check_input(self, crop: torch.Tensor) -> None:
        size = self.crop_size
        if crop.dim() != 4 or crop.shape[1] != self.config.backbone.in_channels:
            raise ValueError(f"expected a (B, {self.config.backbone.in_channels}, {size}, {size})"
                             f" normalised crop, got shape {tuple(crop.shape)}")
        if tuple(crop.shape[-2:]) != (size, size):
            raise ValueError(
                f"this model takes {size}x{size} crops (its relative position tables are sized "
                f"for them), got {crop.shape[-2]}x{crop.shape[-1]}; use the Segmenter, which "
                "resizes, pads and slides windows for any image size")

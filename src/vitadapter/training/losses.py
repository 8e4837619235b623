"""The official Mask2Former training loss with deep supervision.

For every prediction set (the learnable-query prediction before decoder layer 0, then one per
decoder layer) the queries are matched to the gt masks (:class:`HungarianMatcher`), then:

- ``loss_cls``: cross-entropy over C+1 classes, matched queries to their gt class, the others to
  C (no-object); class weights ``[1] * C + [no_object_weight]``; the sum of the weighted terms
  divided by the sum of the weights of the targets (mmdet's ``avg_factor``), times 2.0.
- ``loss_mask``: sigmoid BCE of the matched queries' logits against their gt masks on the
  importance-sampled points (:func:`uncertain_points`), divided by masks * points, times 5.0.
- ``loss_dice``: naive dice (eps 1) on the same points, divided by the mask count, times 5.0.

The mask count is averaged across processes when ``torch.distributed`` is initialised (the
official ``reduce_mean``) and clamped to at least 1. Keys: the last set unprefixed
(``loss_cls``, ``loss_mask``, ``loss_dice``), then ``d0.loss_cls`` ... for the earlier sets in
order, as the official head's dict; the official segmentor's dict adds ``decode.`` in front of
every key (``decode.loss_cls``, ``decode.d0.loss_cls``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .matcher import HungarianMatcher, MatcherConfig
from .point_sampling import PointSource, RandomPoints, SamplePoints, point_sample, uncertain_points

# mmdet divides by (avg_factor + this) to avoid dividing by zero.
_AVG_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Mask2FormerLossConfig:
    """Loss weights and point sampling of the official recipe."""

    class_weight: float = 2.0
    no_object_weight: float = 0.1
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    dice_eps: float = 1.0
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    matcher: MatcherConfig = field(default_factory=MatcherConfig)


def _mean_across_processes(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class Mask2FormerLoss:
    """Deep-supervised Mask2Former loss; ``draw`` is the point source (see
    :mod:`vitadapter.training.point_sampling`) used for every random point: one for the batch
    (the official draw order), or :class:`SamplePoints` (one per image)."""

    def __init__(self, config: Mask2FormerLossConfig | None = None,
                 draw: PointSource | SamplePoints | None = None) -> None:
        self.config = config or Mask2FormerLossConfig()
        self.matcher = HungarianMatcher(self.config.matcher)
        self.draw = draw if draw is not None else RandomPoints()

    def __call__(self, cls_logits: Sequence[torch.Tensor], mask_logits: Sequence[torch.Tensor],
                 gt_labels: Sequence[torch.Tensor], gt_masks: Sequence[torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
        """``cls_logits[l]`` (B, Q, C+1) and ``mask_logits[l]`` (B, Q, h, w) for every set l
        (the last = the final prediction); per image ``gt_labels[b]`` (n,) int64 and
        ``gt_masks[b]`` (n, H, W) of any dtype (0/1)."""
        if len(cls_logits) != len(mask_logits) or not cls_logits:
            raise ValueError("need as many (and at least one) class and mask prediction sets")
        per_set = [self.single_set(c, m, gt_labels, gt_masks)
                   for c, m in zip(cls_logits, mask_logits, strict=True)]
        losses = dict(per_set[-1])
        for index, terms in enumerate(per_set[:-1]):
            losses.update({f"d{index}.{name}": value for name, value in terms.items()})
        return losses

    def match(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor,
              gt_labels: Sequence[torch.Tensor], gt_masks: Sequence[torch.Tensor]
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(query indices, gt indices) for every image of one prediction set."""
        return [self.matcher(cls_logits[b], mask_logits[b], gt_labels[b], gt_masks[b],
                             self._source(b)) for b in range(cls_logits.shape[0])]

    def _source(self, image: int) -> PointSource:
        return self.draw.for_sample(image) if isinstance(self.draw, SamplePoints) else self.draw

    def _points(self, preds: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The loss points of ``preds`` (the matched masks of the batch, ``counts[b]`` of
        image b): drawn for the batch at once, or per image with per-sample sources."""
        cfg = self.config
        sample = (cfg.num_points, cfg.oversample_ratio, cfg.importance_ratio)
        if not isinstance(self.draw, SamplePoints):
            return uncertain_points(preds, *sample, self.draw)
        parts = preds.split(counts)
        return torch.cat([uncertain_points(part, *sample, self.draw.for_sample(b))
                          for b, part in enumerate(parts) if len(part)])

    def single_set(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor,
                   gt_labels: Sequence[torch.Tensor], gt_masks: Sequence[torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_mask`` and ``loss_dice`` of one prediction set."""
        cfg = self.config
        matches = self.match(cls_logits, mask_logits, gt_labels, gt_masks)
        loss_cls = self._class_loss(cls_logits, gt_labels, matches)

        count = sum(len(queries) for queries, _ in matches)
        num_masks = _mean_across_processes(cls_logits.new_tensor(float(count))).clamp(min=1)
        preds = torch.cat([mask_logits[b, q] for b, (q, _) in enumerate(matches)])
        if count == 0:  # keeps every prediction in the graph, as the official code does
            zero = preds.sum()
            return {"loss_cls": loss_cls, "loss_mask": zero, "loss_dice": zero}
        targets = torch.cat([gt_masks[b][g] for b, (_, g) in enumerate(matches)])
        points = self._points(preds, [len(queries) for queries, _ in matches])
        with torch.no_grad():
            target_points = point_sample(targets.unsqueeze(1).to(preds.dtype), points)[:, 0]
        pred_points = point_sample(preds.unsqueeze(1), points)[:, 0]

        probs = pred_points.sigmoid()
        inter = (probs * target_points).sum(1)
        dice = 1 - (2 * inter + cfg.dice_eps) / (
            probs.sum(1) + target_points.sum(1) + cfg.dice_eps)
        loss_dice = cfg.dice_weight * dice.sum() / (num_masks + _AVG_EPS)
        bce = F.binary_cross_entropy_with_logits(pred_points, target_points, reduction="none")
        loss_mask = cfg.mask_weight * bce.sum() / (num_masks * cfg.num_points + _AVG_EPS)
        return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def _class_loss(self, cls_logits: torch.Tensor, gt_labels: Sequence[torch.Tensor],
                    matches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        batch, queries, columns = cls_logits.shape
        no_object = columns - 1
        targets = torch.full((batch, queries), no_object, dtype=torch.long,
                             device=cls_logits.device)
        for b, (q, g) in enumerate(matches):
            targets[b, q] = gt_labels[b].to(cls_logits.device)[g]
        weights = cls_logits.new_ones(columns)
        weights[no_object] = self.config.no_object_weight
        targets = targets.flatten()
        terms = F.cross_entropy(cls_logits.flatten(0, 1), targets, weight=weights,
                                reduction="none")
        return self.config.class_weight * terms.sum() / (weights[targets].sum() + _AVG_EPS)

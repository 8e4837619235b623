"""Hungarian matching of Mask2Former queries to ground-truth masks (the official assigner)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .point_sampling import PointSource, RandomPoints, point_sample


@dataclass(frozen=True)
class MatcherConfig:
    """Cost weights and point count of the official ``MaskHungarianAssigner`` setup."""

    class_cost: float = 2.0  # -softmax probability of the gt class
    mask_cost: float = 5.0   # sigmoid BCE, mean over the points
    dice_cost: float = 5.0   # naive dice of the sigmoid, eps 1
    num_points: int = 12544  # uniform points shared by predictions and gt masks
    dice_eps: float = 1.0


def class_cost(cls_logits: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """(Q, n): minus the softmax probability that each query gives each gt's class."""
    return -cls_logits.softmax(-1)[:, gt_labels]


def mask_bce_cost(mask_points: torch.Tensor, gt_points: torch.Tensor) -> torch.Tensor:
    """(Q, n): mean over points of the sigmoid BCE between query logits (Q, P) and gt values
    (n, P), expanded as ``pos @ gt + neg @ (1 - gt)`` for every pair at once."""
    pos = F.binary_cross_entropy_with_logits(mask_points, torch.ones_like(mask_points),
                                             reduction="none")
    neg = F.binary_cross_entropy_with_logits(mask_points, torch.zeros_like(mask_points),
                                             reduction="none")
    cost = torch.einsum("qp,np->qn", pos, gt_points)
    cost = cost + torch.einsum("qp,np->qn", neg, 1 - gt_points)
    return cost / mask_points.shape[1]


def dice_cost(mask_points: torch.Tensor, gt_points: torch.Tensor, eps: float = 1.0
              ) -> torch.Tensor:
    """(Q, n): naive dice loss ``1 - (2 |p g| + eps) / (|p| + |g| + eps)`` of the sigmoid."""
    probs = mask_points.sigmoid()
    inter = torch.einsum("qp,np->qn", probs, gt_points)
    total = probs.sum(-1)[:, None] + gt_points.sum(-1)[None, :]
    return 1 - (2 * inter + eps) / (total + eps)


class HungarianMatcher:
    """One-to-one assignment of gt masks to queries minimising the weighted cost sum.

    The points (one draw of (1, num_points, 2) per image, even without gt) sample the query
    logits at their own resolution and the gt masks at theirs (full resolution).
    """

    def __init__(self, config: MatcherConfig | None = None) -> None:
        self.config = config or MatcherConfig()

    @torch.no_grad()
    def __call__(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor,
                 gt_labels: torch.Tensor, gt_masks: torch.Tensor,
                 draw: PointSource | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Match one image: ``cls_logits`` (Q, C+1), ``mask_logits`` (Q, h, w), ``gt_labels``
        (n,), ``gt_masks`` (n, H, W). Returns (query indices ascending, their gt indices)."""
        from scipy.optimize import linear_sum_assignment

        cfg = self.config
        draw = draw if draw is not None else RandomPoints()
        points = draw((1, cfg.num_points, 2), mask_logits.device)
        num_queries, num_gts = mask_logits.shape[0], gt_masks.shape[0]
        empty = torch.empty(0, dtype=torch.long, device=mask_logits.device)
        if num_gts == 0 or num_queries == 0:
            return empty, empty
        dtype = torch.promote_types(mask_logits.dtype, torch.float32)  # costs in >= float32
        points = points.to(dtype)
        pred = point_sample(mask_logits.unsqueeze(1).to(dtype),
                            points.expand(num_queries, -1, -1))[:, 0]
        gt = point_sample(gt_masks.unsqueeze(1).to(dtype), points.expand(num_gts, -1, -1))[:, 0]
        cost = (cfg.class_cost * class_cost(cls_logits.to(dtype), gt_labels)
                + cfg.mask_cost * mask_bce_cost(pred, gt)
                + cfg.dice_cost * dice_cost(pred, gt, cfg.dice_eps))
        rows, cols = linear_sum_assignment(cost.double().cpu().numpy())
        queries = torch.as_tensor(rows, dtype=torch.long, device=mask_logits.device)
        gts = torch.as_tensor(cols, dtype=torch.long, device=mask_logits.device)
        order = torch.argsort(queries)
        return queries[order], gts[order]

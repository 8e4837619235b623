"""Training pieces: the official Mask2Former loss."""

from .losses import Mask2FormerLoss, Mask2FormerLossConfig
from .matcher import HungarianMatcher, MatcherConfig
from .point_sampling import PointSource, RandomPoints, ReplayPoints, point_sample, uncertain_points
from .targets import masks_from_semantic

__all__ = [
    "HungarianMatcher",
    "Mask2FormerLoss",
    "Mask2FormerLossConfig",
    "MatcherConfig",
    "PointSource",
    "RandomPoints",
    "ReplayPoints",
    "masks_from_semantic",
    "point_sample",
    "uncertain_points",
]

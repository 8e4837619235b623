"""Training pieces: the official Mask2Former loss, layer-decay param groups, lr schedule."""

from .losses import Mask2FormerLoss, Mask2FormerLossConfig
from .matcher import HungarianMatcher, MatcherConfig
from .param_groups import layer_decay_param_groups
from .point_sampling import PointSource, RandomPoints, ReplayPoints, point_sample, uncertain_points
from .schedule import PolySchedule, PolyScheduleConfig, lr_at
from .targets import masks_from_semantic

__all__ = [
    "HungarianMatcher",
    "Mask2FormerLoss",
    "Mask2FormerLossConfig",
    "MatcherConfig",
    "PointSource",
    "PolySchedule",
    "PolyScheduleConfig",
    "RandomPoints",
    "ReplayPoints",
    "layer_decay_param_groups",
    "lr_at",
    "masks_from_semantic",
    "point_sample",
    "uncertain_points",
]

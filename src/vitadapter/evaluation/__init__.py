"""Measuring a model on a dataset as mmseg 0.x does: aAcc, per-class IoU/Acc, mIoU, mAcc.

``datasets`` reads the on-disk layouts, ``metrics`` counts and scores, ``records`` keeps the
resumable state, ``runner`` runs the loop, ``report`` writes tables and files. None of these
imports torch; :mod:`vitadapter.distributed` imports torch.distributed only under ``torchrun``.
"""

from ..data.datasets import LAYOUTS, EvalDataset, Layout, Sample, decode_label, open_dataset
from ..distributed import Shard
from .loop import EvalResult, run_evaluation
from .metrics import Areas, Metrics, compute_metrics, intersect_and_union, percent

__all__ = [
    "LAYOUTS",
    "Areas",
    "EvalDataset",
    "EvalResult",
    "Layout",
    "Metrics",
    "Sample",
    "Shard",
    "compute_metrics",
    "decode_label",
    "intersect_and_union",
    "open_dataset",
    "percent",
    "run_evaluation",
]

"""Measuring a model on a dataset as mmseg 0.x does: aAcc, per-class IoU/Acc, mIoU, mAcc.

``datasets`` reads the on-disk layouts and ``metrics`` counts and scores; neither imports torch.
"""

from .datasets import LAYOUTS, EvalDataset, Layout, Sample, decode_label, open_dataset
from .metrics import Areas, Metrics, compute_metrics, intersect_and_union, percent

__all__ = [
    "LAYOUTS",
    "Areas",
    "EvalDataset",
    "Layout",
    "Metrics",
    "Sample",
    "compute_metrics",
    "decode_label",
    "intersect_and_union",
    "open_dataset",
    "percent",
]

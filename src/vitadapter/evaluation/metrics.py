"""mmseg 0.x's semantic-segmentation metrics (``intersect_and_union`` + ``eval_metrics``).

Per image, pixels whose label is the ignore index are dropped; on the others, per class, the
intersection (prediction == label == class), the predicted area and the labelled area are
counted, and the union is ``pred + label - intersect``. The four vectors are summed over the
dataset, then:

- aAcc = total intersection / total labelled pixels;
- IoU[c] = intersect[c] / union[c], NaN when the class is in neither predictions nor labels;
- Acc[c] = intersect[c] / label[c], NaN when the class is in no label;
- mIoU, mAcc = means over the classes that are not NaN.

Counts are exact int64 here, and ratios float64. mmseg counts each image with ``torch.histc``
in float32 (exact below 2**24 pixels per image), then sums the images in float64
(``eval_metrics``: the same totals as here) or, in the ``pre_eval`` path its ``tools/test.py``
takes, in float32 with float32 ratios. On COCO-Stuff-sized totals (up to ~2e8 pixels per class)
that rounding moves aAcc/mIoU/mAcc by about 1e-5 percentage points, so the two decimals mmseg
prints agree unless a value lies that close to a rounding boundary. mmseg's ``histc`` silently
drops values outside 0..num_classes-1; here they raise, since the dataset readers already refuse
such labels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..data.datasets import IGNORE_INDEX


@dataclass(frozen=True)
class Areas:
    """Per-class pixel counts (int64 vectors of length num_classes) of one image or summed
    over many."""

    intersect: np.ndarray
    pred: np.ndarray
    label: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> Areas:
        return cls.from_array(np.zeros((3, num_classes), np.int64))

    @classmethod
    def from_array(cls, array: np.ndarray) -> Areas:
        """From the (3, num_classes) stack of :meth:`to_array`."""
        array = np.asarray(array, np.int64)
        return cls(array[0].copy(), array[1].copy(), array[2].copy())

    def to_array(self) -> np.ndarray:
        """(3, num_classes) int64: intersect, pred, label."""
        return np.stack([self.intersect, self.pred, self.label]).astype(np.int64)

    @property
    def union(self) -> np.ndarray:
        return self.pred + self.label - self.intersect

    def __add__(self, other: Areas) -> Areas:
        return Areas.from_array(self.to_array() + other.to_array())


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int = IGNORE_INDEX) -> Areas:
    """The areas of one image: ``pred`` and ``label`` are integer arrays of the same shape,
    ``label`` in train ids with ``ignore_index`` for pixels not evaluated."""
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape "
                         f"{label.shape}")
    keep = label != ignore_index
    pred = pred[keep].astype(np.int64)
    label = label[keep].astype(np.int64)
    for what, values in (("prediction", pred), ("label", label)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0]
            raise ValueError(f"{what} value {bad} is outside 0..{num_classes - 1}")
    hit = pred[pred == label]
    return Areas(np.bincount(hit, minlength=num_classes),
                 np.bincount(pred, minlength=num_classes),
                 np.bincount(label, minlength=num_classes))


@dataclass(frozen=True)
class Metrics:
    """Fractions in [0, 1] (NaN where undefined), as mmseg's ``total_area_to_metrics``."""

    all_acc: float
    iou: np.ndarray
    acc: np.ndarray

    @property
    def miou(self) -> float:
        return _nanmean(self.iou)

    @property
    def macc(self) -> float:
        return _nanmean(self.acc)


def compute_metrics(areas: Areas) -> Metrics:
    """aAcc, per-class IoU and Acc from dataset totals."""
    intersect: np.ndarray = areas.intersect.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        all_acc = intersect.sum() / areas.label.sum()
        iou = intersect / areas.union
        acc = intersect / areas.label
    return Metrics(float(all_acc), iou, acc)


def percent(value: float) -> float | None:
    """A fraction as mmseg prints it: ``np.round(value * 100, 2)``; None for NaN."""
    if np.isnan(value):
        return None
    return float(np.round(value * 100, 2))


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: the mean is NaN
        return float(np.nanmean(values))

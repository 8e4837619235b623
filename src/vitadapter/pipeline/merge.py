"""The memory-bounded merge of slide-window scores into a label map.

Reproduces the end of mmseg's ``inference`` + ``simple_test``/``aug_test``: each window's class
scores bilinearly upsampled to the crop, summed into the canvas and divided by the per-pixel
window count (:meth:`SlideScores.canvas_rows`); the canvas cropped to the unpadded size,
bilinearly resized to the photo's size, softmax over classes (flipped back for flipped views),
averaged over views, argmax. All of it runs in bands of output rows, so a 12-megapixel photo
never needs its ``classes x H x W`` score volume in memory. Numpy only.

The softmax takes ``exp`` in float64 rounded to float32 (:func:`softmax`): float32 ``exp``
differs between libraries in the last bit, the rounded float64 one does not, so the PyTorch
merge (:mod:`vitadapter.backends.torch_merge`) reproduces these labels bit for bit. With one
view the softmax is only evaluated where two classes' scores nearly tie (:func:`argmax_softmax`):
elsewhere its argmax is provably the scores' argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .resample import LinearTaps, linear_taps, resize_rows, resize_width
from .windows import SlideScores

# Bytes of float64 temporaries a merge band may use.
BAND_BYTES = 64 * 2**20
# Scores further than this (times max(1, |top score|)) below the top one have a softmax
# probability below the top one's by far more than float32 rounding: they cannot win or tie.
TIE_MARGIN = 1e-5


@dataclass
class LabelMap:
    """The merged prediction at the original resolution."""

    labels: np.ndarray        # (H, W) int64 class ids
    confidence: np.ndarray    # (C,) mean posterior of the class over its pixels (0 if absent)
    pixel_count: np.ndarray   # (C,) pixels per class


def merge_views(views: Sequence[SlideScores], band_rows: int | None = None, *,
                logits: bool = False) -> LabelMap:
    """Resize every view's canvas to the original size, softmax, flip back, average over
    views and take the argmax, one band of output rows at a time.

    The labels are the official ones. The per-class confidence is separate: the official
    softmax runs over raw Mask2Former scores (sums of class x mask probabilities in [0, 1]), so
    its winning value is close to 1 / num_classes for any model; instead each pixel's scores are
    normalised to sum to one (a class posterior), averaged over views, and the winning class's
    posterior is averaged over that class's pixels. With ``logits`` (UperNet's scores are class
    logits) the posterior is the softmax itself.
    """
    posterior_of = softmax if logits else _normalised
    height, width = views[0].view.original_shape
    num_classes = views[0].num_classes
    if band_rows is None:
        band_rows = max(1, BAND_BYTES // (8 * num_classes * width * 2))
    labels = np.empty((height, width), np.int64)
    confidence_sum = np.zeros(num_classes, np.float64)
    pixel_count = np.zeros(num_classes, np.int64)
    row_taps = [linear_taps(v.view.valid_shape[0], height) for v in views]
    for start in range(0, height, band_rows):
        stop = min(start + band_rows, height)
        bands = [_band_logits(slide, taps.rows(start, stop), width)
                 for slide, taps in zip(views, row_taps, strict=True)]
        posterior = posterior_of(bands[0])
        if len(bands) == 1:
            band_labels = argmax_softmax(bands[0])
        else:
            probs = softmax(bands[0])
            for band in bands[1:]:
                probs = probs + softmax(band)
                posterior = posterior + posterior_of(band)
            band_labels = (probs / np.float32(len(views))).argmax(0)
        labels[start:stop] = band_labels
        winning = np.take_along_axis(posterior, band_labels[None], 0)[0] / len(views)
        confidence_sum += np.bincount(band_labels.ravel(), weights=winning.ravel(),
                                      minlength=num_classes)
        pixel_count += np.bincount(band_labels.ravel(), minlength=num_classes)
    confidence = np.divide(confidence_sum, pixel_count, out=np.zeros(num_classes),
                           where=pixel_count > 0)
    return LabelMap(labels, confidence.astype(np.float32), pixel_count)


def _band_logits(slide: SlideScores, taps: LinearTaps, width: int) -> np.ndarray:
    """Rows of the view's scores resized to the photo (flipped back for flipped views)."""
    first, last = taps.span
    band = resize_width(slide.canvas_rows(first, last), width)
    logits = resize_rows(band, taps, offset=first)
    return logits[:, :, ::-1] if slide.view.flipped else logits


def _normalised(scores: np.ndarray) -> np.ndarray:
    return scores / np.maximum(class_sum(scores), np.float32(1e-12))


def softmax(x: np.ndarray) -> np.ndarray:
    """float32 softmax over the leading (class) axis with ``exp`` taken in float64 and rounded
    (reproducible across libraries) and the sum in class order."""
    shifted = x - x.max(axis=0, keepdims=True)
    e = np.exp(shifted.astype(np.float64)).astype(np.float32)
    e /= class_sum(e)
    return e


def class_sum(x: np.ndarray) -> np.ndarray:
    """The sum over the leading axis in index order (numpy's own order depends on the shape,
    and with it the last bit; the torch merge sums in this order too)."""
    total = x[0].copy()
    for row in x[1:]:
        total += row
    return total


def argmax_softmax(logits: np.ndarray) -> np.ndarray:
    """``softmax(logits).argmax(0)`` for (C, ...) logits, the softmax only evaluated where
    another class comes within :data:`TIE_MARGIN` of the top score."""
    top = logits.max(0)
    labels = logits.argmax(0)
    margin = np.float32(TIE_MARGIN) * np.maximum(np.abs(top), np.float32(1))
    near = (logits >= top - margin).sum(0) > 1
    if near.any():
        labels[near] = softmax(logits[:, near]).argmax(0)
    return labels

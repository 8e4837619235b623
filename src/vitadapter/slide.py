"""Sliding-window inference and the memory-bounded merge to a label map.

Reproduces mmseg's ``slide_inference`` + ``inference`` + ``simple_test``/``aug_test``:

1. windows of ``crop`` every ``stride`` pixels, the last one clamped to the border;
2. each window's class scores (at 1/4 resolution) bilinearly upsampled to the crop, summed into
   the canvas and divided by the per-pixel window count;
3. the canvas cropped to the unpadded size, bilinearly resized to the original photo size,
   softmax over classes (flipped back for flipped views), averaged over views, argmax.

Only the per-window scores at 1/4 resolution are kept; steps 2-3 run in bands of output rows,
so a 12-megapixel photo never needs its ``classes x H x W`` score volume in memory. Numpy only:
the ONNX backend shares this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .preprocessing import View
from .resample import LinearTaps, linear_taps, resize_rows, resize_width

# Runs a batch of normalised crops (N, 3, S, S) to class scores (N, C, S/4, S/4).
CropRunner = Callable[[np.ndarray], np.ndarray]
# Bytes of float64 temporaries a merge band may use.
BAND_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Window:
    y1: int
    y2: int
    x1: int
    x2: int


def sliding_windows(height: int, width: int, crop: tuple[int, int],
                    stride: tuple[int, int]) -> list[Window]:
    """mmseg's window grid: ``max(H - crop + stride - 1, 0) // stride + 1`` per axis, the last
    window clamped to the border. Rows outer, columns inner."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            windows.append(Window(max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


@dataclass
class SlideScores:
    """The window scores of one view and everything needed to merge them."""

    view: View
    windows: list[Window]
    scores: list[np.ndarray]  # (C, h, w) per window, at the head's resolution
    crop: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return self.scores[0].shape[0]

    def canvas_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the averaged canvas, cropped to the unpadded width:
        (C, stop - start, w) float32, exactly as the whole canvas would hold them."""
        width = self.view.valid_shape[1]
        total = np.zeros((self.num_classes, stop - start, width), np.float32)
        count = np.zeros((stop - start, width), np.float32)
        for window, scores in zip(self.windows, self.scores, strict=True):
            lo, hi = max(start, window.y1), min(stop, window.y2)
            if lo >= hi or window.x1 >= width:
                continue
            taps = linear_taps(scores.shape[1], self.crop[0]).rows(lo - window.y1,
                                                                   hi - window.y1)
            first, last = taps.span
            band = resize_width(scores[:, first:last], self.crop[1])
            upsampled = resize_rows(band, taps, offset=first)
            x2 = min(window.x2, width)
            total[:, lo - start:hi - start, window.x1:x2] += upsampled[:, :, :x2 - window.x1]
            count[lo - start:hi - start, window.x1:x2] += 1
        return total / count

    def canvas(self) -> np.ndarray:
        """The whole averaged canvas at the preprocessed size, (C, h, w)."""
        return self.canvas_rows(0, self.view.valid_shape[0])


def run_windows(view: View, runner: CropRunner, crop: tuple[int, int],
                stride: tuple[int, int], batch_size: int = 1) -> SlideScores:
    """Cut ``view`` into windows and run them through ``runner``, ``batch_size`` at a time."""
    image = view.image
    windows = sliding_windows(image.shape[1], image.shape[2], crop, stride)
    scores: list[np.ndarray] = []
    for i in range(0, len(windows), max(1, batch_size)):
        chunk = windows[i:i + max(1, batch_size)]
        batch = np.stack([image[:, w.y1:w.y2, w.x1:w.x2] for w in chunk])
        scores.extend(np.asarray(runner(batch), dtype=np.float32))
    return SlideScores(view, windows, scores, crop)


@dataclass
class LabelMap:
    """The merged prediction at the original resolution."""

    labels: np.ndarray        # (H, W) int64 class ids
    confidence: np.ndarray    # (C,) mean posterior of the class over its pixels (0 if absent)
    pixel_count: np.ndarray   # (C,) pixels per class


def merge_views(views: Sequence[SlideScores], band_rows: int | None = None) -> LabelMap:
    """Resize every view's canvas to the original size, softmax, flip back, average over
    views and take the argmax, one band of output rows at a time.

    The labels are the official ones. The per-class confidence is separate: the official
    softmax runs over raw Mask2Former scores (sums of class x mask probabilities in [0, 1]), so
    its winning value is close to 1 / num_classes for any model; instead each pixel's scores are
    normalised to sum to one (a class posterior), averaged over views, and the winning class's
    posterior is averaged over that class's pixels.
    """
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
        probs = posterior = None
        for slide, taps in zip(views, row_taps, strict=True):
            logits = _band_logits(slide, taps.rows(start, stop), width)
            p, q = softmax(logits, axis=0), _normalised(logits)
            probs = p if probs is None else probs + p
            posterior = q if posterior is None else posterior + q
        band_labels = (probs / np.float32(len(views)) if len(views) > 1 else probs).argmax(0)
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
    total = scores.sum(axis=0, keepdims=True)
    return scores / np.maximum(total, np.float32(1e-12))


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e

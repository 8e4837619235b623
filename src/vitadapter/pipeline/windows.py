"""Sliding-window inference (mmseg's ``slide_inference``): windows of ``crop`` every ``stride``
pixels, the last one clamped to the border, each run through a crop runner (any backend).

Only the per-window class scores at 1/4 resolution are kept; :mod:`.merge` upsamples them into
the canvas a band of rows at a time. Numpy only: the ONNX backend shares this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import CropRunner
from .preprocess import View
from .resample import linear_taps, resize_rows, resize_width


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

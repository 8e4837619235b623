"""Sliding-window inference (mmseg's and Meta's ``slide_inference``): windows of ``crop`` every
``stride`` pixels, the last one pushed back inside the image, each run through a crop runner (any
backend).

mmseg pipeline: the view is padded to at least the crop, so every window is crop-sized; only the
per-window class scores at 1/4 resolution are kept (:class:`SlideScores`) and :mod:`.merge`
upsamples them into the canvas a band of rows at a time.

dinov3 pipeline (Meta's): no padding, so a window is as large as the image where the image is
smaller than the crop in one dimension, and a crop larger than the image in both becomes a
square of the shorter side; the runner returns scores at each window's own size, added into the
view's canvas as they arrive (:class:`SummedScores`).

Numpy only: the ONNX backend shares this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..backends.base import CropRunner
from ..config.schema import Pipeline
from ..errors import ConfigError
from .preprocess import View
from .resample import linear_taps, resize_rows, resize_width

S = TypeVar("S")


@dataclass(frozen=True)
class Window:
    y1: int
    y2: int
    x1: int
    x2: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y2 - self.y1, self.x2 - self.x1


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


def view_windows(view: View, crop: tuple[int, int], stride: tuple[int, int],
                 pipeline: Pipeline = "mmseg") -> list[Window]:
    """The windows of a view in the pipeline's grid. dinov3: a crop larger than the image in
    both dimensions becomes a square of the shorter side (Meta's ``slide_inference``)."""
    height, width = view.image.shape[1:]
    if pipeline == "dinov3" and crop[0] > height and crop[1] > width:
        crop = (min(height, width), min(height, width))
    return sliding_windows(height, width, crop, stride)


def batches(windows: Sequence[Window], size: int) -> Iterator[list[Window]]:
    """Consecutive runs of at most ``size`` windows of one shape (the crops of a batch are
    stacked)."""
    chunk: list[Window] = []
    for window in windows:
        if chunk and (len(chunk) >= size or window.shape != chunk[0].shape):
            yield chunk
            chunk = []
        chunk.append(window)
    if chunk:
        yield chunk


@dataclass
class SlideScores:
    """The window scores of one view and everything needed to merge them (mmseg pipeline)."""

    view: View
    windows: list[Window]
    scores: list[np.ndarray]  # (C, h, w) per window, at the head's resolution
    crop: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return self.scores[0].shape[0]

    def add(self, scores: np.ndarray) -> None:
        """The next window's scores."""
        self.scores.append(scores)

    def score_arrays(self) -> list[np.ndarray]:
        return self.scores

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


@dataclass
class SummedScores:
    """The canvas of one view in the dinov3 pipeline, as Meta's ``slide_inference`` builds it:
    each window's scores (already at the window's size) added into a float32 canvas of the
    view's size in window order, with the number of windows per pixel; the canvas is their
    quotient. Holds numpy arrays, or torch tensors on the runner's device (the torch merge):
    the arithmetic is the same."""

    view: View
    windows: list[Window]
    crop: tuple[int, int]
    total: Any = field(default=None, repr=False)  # (C, h, w) float32 sums, from the first add
    count: Any = field(default=None, repr=False)  # (h, w) float32 windows per pixel
    added: int = 0

    @property
    def num_classes(self) -> int:
        return self.total.shape[0]

    @property
    def device(self) -> Any:
        return self.total.device

    def add(self, scores: Any) -> None:
        """The next window's (C, h, w) float32 scores at the window's size."""
        window = self.windows[self.added]
        if tuple(scores.shape[1:]) != window.shape:
            raise ConfigError(
                f"the dinov3 pipeline needs each crop's scores at the crop's size: a "
                f"{window.shape[0]}x{window.shape[1]} crop gave "
                f"{scores.shape[1]}x{scores.shape[2]} (a model whose scores are at 1/4 of the "
                "crop runs the mmseg pipeline)")
        if self.total is None:
            height, width = self.view.valid_shape
            if hasattr(scores, "new_zeros"):  # a torch tensor: stay on its device
                self.total = scores.new_zeros((scores.shape[0], height, width))
                self.count = scores.new_zeros((height, width))
            else:
                self.total = np.zeros((scores.shape[0], height, width), np.float32)
                self.count = np.zeros((height, width), np.float32)
        self.total[:, window.y1:window.y2, window.x1:window.x2] += scores
        self.count[window.y1:window.y2, window.x1:window.x2] += 1
        self.added += 1

    def score_arrays(self) -> list[Any]:
        return [self.total]

    def canvas_rows(self, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of the canvas (sums / window counts), (C, stop - start, w)."""
        return self.total[:, start:stop] / self.count[start:stop]

    def canvas(self) -> Any:
        """The whole canvas at the view's size, (C, h, w) (Meta's ``slide_inference``)."""
        return self.canvas_rows(0, self.view.valid_shape[0])


def open_slide(view: View, crop: tuple[int, int], stride: tuple[int, int], pipeline: Pipeline,
               per_window: Callable[[View, list[Window], list[Any], tuple[int, int]], S],
               ) -> S | SummedScores:
    """An empty slide of ``view`` for the pipeline, its windows in order, scores to come:
    ``per_window(view, windows, [], crop)`` (:class:`SlideScores`, or the torch merge's
    ``DeviceSlide``) for the mmseg pipeline, a :class:`SummedScores` for dinov3."""
    windows = view_windows(view, crop, stride, pipeline)
    if pipeline == "dinov3":
        return SummedScores(view, windows, crop)
    return per_window(view, windows, [], crop)


def run_windows(view: View, runner: CropRunner, crop: tuple[int, int],
                stride: tuple[int, int], batch_size: int = 1,
                pipeline: Pipeline = "mmseg") -> SlideScores | SummedScores:
    """Cut ``view`` into the pipeline's windows and run them through ``runner``, up to
    ``batch_size`` (same-shaped) crops at a time."""
    image = view.image
    slide = open_slide(view, crop, stride, pipeline, SlideScores)
    for chunk in batches(slide.windows, max(1, batch_size)):
        batch = np.stack([image[:, w.y1:w.y2, w.x1:w.x2] for w in chunk])
        for scores in np.asarray(runner(batch), dtype=np.float32):
            slide.add(scores)
    return slide

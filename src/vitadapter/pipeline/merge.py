"""The memory-bounded merge of slide-window scores into a label map.

Reproduces the end of mmseg's ``inference`` + ``simple_test``/``aug_test``: each window's class
scores bilinearly upsampled to the crop, summed into the canvas and divided by the per-pixel
window count (:meth:`SlideScores.canvas_rows`); the canvas cropped to the unpadded size,
bilinearly resized to the photo's size, softmax over classes (flipped back for flipped views),
averaged over views, argmax. All of it runs in bands of output rows, so a 12-megapixel photo
never needs its ``classes x H x W`` score volume in memory. Numpy only.

Meta's DINOv3 evaluation (``make_inference`` + ``evaluate_segmentation_model``) is the same
computation on another canvas: crop scores already at the crop's size summed and divided by the
window count at the resized size (:class:`~.windows.SummedScores`: held per view, its size set
by the short side, not by the photo), then the same resize to the photo's size, flip back,
softmax, mean over the views in their order and argmax; so both pipelines merge here.

The softmax takes ``exp`` in float64 rounded to float32 (:func:`softmax`): float32 ``exp``
differs between libraries in the last bit, the rounded float64 one does not, so the PyTorch
merge (:mod:`vitadapter.backends.torch_merge`) reproduces these labels bit for bit. With one
view the softmax is only evaluated where two classes' scores nearly tie (:func:`argmax_softmax`):
elsewhere its argmax is provably the scores' argmax.

With one view and Mask2Former scores the ``classes x H x W`` volume is not even resized: every
output pixel blends one 2x2 cell of the canvas, so its score for a class lies between that
class's minimum and maximum over the cell (:class:`~.cell_grid.CellGrid`). Where one class's
minimum beats every other class's maximum by :data:`TIE_MARGIN`, that class is the label and
only its score is interpolated (for the confidence); in the other cells (class boundaries) only
the contending classes are interpolated, and every class where two of them nearly tie. The
labels are exactly the full resize's; the confidence divides by the interpolated sum of the
canvas's scores in place of the sum of the interpolated scores (equal up to float32 rounding).
A 12-megapixel photo's merge takes seconds instead of half a minute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InferenceError
from .cell_grid import CellGrid
from .preprocess import View
from .resample import LinearTaps, linear_taps, resize_rows, resize_width
from .windows import SlideScores, SummedScores

# Bytes of float64 temporaries a merge band may use.
BAND_BYTES = 64 * 2**20
NON_FINITE = ("the model produced non-finite scores (NaN or inf): its weights hold NaN or inf "
              "values (a diverged training run or a damaged checkpoint), or --precision fp16 "
              "overflowed (try bf16 or fp32)")
# Scores further than this (times max(1, |top score|)) below the top one have a softmax
# probability below the top one's by far more than float32 rounding: they cannot win or tie.
TIE_MARGIN = 1e-5
# Where the contested pixels' scores would be over this share of the band's classes x pixels, a
# one-view band resizes every class instead.
CONTESTED_SHARE = 0.25


@dataclass
class LabelMap:
    """The merged prediction at the original resolution."""

    labels: np.ndarray        # (H, W) int64 class ids
    confidence: np.ndarray    # (C,) mean posterior of the class over its pixels (0 if absent)
    pixel_count: np.ndarray   # (C,) pixels per class


def check_finite(views: Sequence[SlideScores | SummedScores]) -> None:
    """Refuse window scores that are not all finite (NaN weights, fp16 overflow) with an error
    that says so, before a merge turns them into a label map of one class."""
    if not all(np.isfinite(scores).all() for view in views for scores in view.score_arrays()):
        raise InferenceError(NON_FINITE)


def merge_views(views: Sequence[SlideScores | SummedScores], band_rows: int | None = None,
                *, logits: bool = False) -> LabelMap:
    """Resize every view's canvas to the original size, softmax, flip back, average over
    views and take the argmax, one band of output rows at a time.

    The labels are the official ones. The per-class confidence is separate: the official
    softmax runs over raw Mask2Former scores (sums of class x mask probabilities in [0, 1]), so
    its winning value is close to 1 / num_classes for any model; instead each pixel's scores are
    normalised to sum to one (a class posterior), averaged over views, and the winning class's
    posterior is averaged over that class's pixels. With ``logits`` (UperNet's scores are class
    logits) the posterior is the softmax itself.
    """
    first = views[0]
    height, width = first.view.original_shape
    num_classes = first.num_classes
    one_view = len(views) == 1 and not logits
    every_class_rows = band_rows or max(1, BAND_BYTES // (8 * num_classes * width * 2))
    if band_rows is None:
        band_rows = one_view_band_rows(first.view, first.crop[1], num_classes, BAND_BYTES) \
            if one_view else every_class_rows
    labels = np.empty((height, width), np.int64)
    confidence_sum = np.zeros(num_classes, np.float64)
    pixel_count = np.zeros(num_classes, np.int64)
    row_taps = [linear_taps(v.view.valid_shape[0], height) for v in views]
    for start, stop in spans(0, height, band_rows):
        canvases = [_CanvasBand.of(view, taps.rows(start, stop))
                    for view, taps in zip(views, row_taps, strict=True)]
        band = _one_view_band(canvases[0], width) if one_view else None
        parts = [(start, band)] if band is not None else [
            (lo, _views_band([c.resized(lo - start, hi - start, width) for c in canvases],
                             softmax if logits else _normalised))
            for lo, hi in spans(start, stop, every_class_rows)]
        for lo, (band_labels, winning) in parts:
            labels[lo:lo + len(band_labels)] = band_labels
            confidence_sum += np.bincount(band_labels.ravel(), weights=winning.ravel(),
                                          minlength=num_classes)
            pixel_count += np.bincount(band_labels.ravel(), minlength=num_classes)
    confidence = np.divide(confidence_sum, pixel_count, out=np.zeros(num_classes),
                           where=pixel_count > 0)
    return LabelMap(labels, confidence.astype(np.float32), pixel_count)


def one_view_band_rows(view: View, crop_width: int, num_classes: int, budget: int) -> int:
    """Output rows per band of a one-view merge whose temporaries stay within ``budget``
    bytes: a band of the canvas (every class) and a few arrays per output pixel."""
    height, width = view.original_shape
    canvas_rows = max(1, budget // (8 * num_classes * max(view.valid_shape[1], crop_width) * 4))
    by_canvas = canvas_rows * height // view.valid_shape[0]
    return max(1, min(by_canvas, budget // (96 * width)))


def spans(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into consecutive ranges of ``step``."""
    return [(lo, min(lo + step, stop)) for lo in range(start, stop, step)]


def _views_band(bands: list[np.ndarray], posterior_of: Callable[[np.ndarray], np.ndarray],
                ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and winning posteriors of a band from every view's resized scores."""
    posterior = posterior_of(bands[0])
    if len(bands) == 1:
        labels = argmax_softmax(bands[0])
    else:
        probs = softmax(bands[0])
        for band in bands[1:]:
            probs = probs + softmax(band)
            posterior = posterior + posterior_of(band)
        labels = (probs / np.float32(len(bands))).argmax(0)
    return labels, np.take_along_axis(posterior, labels[None], 0)[0] / len(bands)


@dataclass(frozen=True)
class _CanvasBand:
    """The canvas rows a band of output rows reads, with the band's row taps."""

    canvas: np.ndarray  # (C, rows, w) from canvas row ``first``
    first: int
    taps: LinearTaps
    flipped: bool

    @classmethod
    def of(cls, slide: SlideScores | SummedScores, taps: LinearTaps) -> _CanvasBand:
        first, last = taps.span
        return cls(slide.canvas_rows(first, last), first, taps, slide.view.flipped)

    def resized(self, start: int, stop: int, width: int) -> np.ndarray:
        """The band's output rows ``start:stop`` with every class, flipped back."""
        taps = self.taps.rows(start, stop)
        first, last = taps.span
        rows = resize_width(self.canvas[:, first - self.first:last - self.first], width)
        logits = resize_rows(rows, taps, offset=first)
        return logits[:, :, ::-1] if self.flipped else logits


def _one_view_band(band: _CanvasBand, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and winning posteriors of a band of the single view without resizing every
    class (see the module doc), or None where too many pixels are contested for it to pay."""
    canvas = band.canvas
    num_classes, _, canvas_cols = canvas.shape
    grid = CellGrid.of(band.taps, band.first, canvas_cols, width, band.flipped)
    largest = max(float(canvas.max()), -float(canvas.min()))
    if not np.isfinite(largest):  # NaN or infinite scores: the full resize, as the official
        return None
    winners, contenders = grid.contenders(canvas, np.float32(TIE_MARGIN * max(1.0, largest)))
    counts = np.count_nonzero(contenders, axis=0)
    contested = (counts > 1)[grid.row_cell][:, grid.col_cell]
    # the contested pixels' scores: at most every contender of every contested cell
    contested_scores = np.count_nonzero(contested) * int(counts.max())
    if contested_scores > CONTESTED_SHARE * num_classes * contested.size:
        return None
    labels = winners[grid.row_cell][:, grid.col_cell]
    ys, xs = np.nonzero(contested)
    step = max(1, BAND_BYTES // (96 * int(counts.max())))  # a few float64 / int64 per score
    for k in range(0, len(ys), step):
        y, x = ys[k:k + step], xs[k:k + step]
        labels[y, x] = _contested_labels(canvas, grid, contenders, counts, y, x)
    score = grid.interpolate(canvas.ravel(), labels * (canvas.size // num_classes))
    total = grid.interpolate(class_sum(canvas).ravel())
    return labels, score / np.maximum(total, np.float32(1e-12))


def _contested_labels(canvas: np.ndarray, grid: CellGrid, contenders: np.ndarray,
                      counts: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The labels of pixels ``ys, xs`` whose cells have several contenders: the argmax over
    the contenders' interpolated scores (the other classes stay below by the margin), and the
    exact softmax over every class where two contenders nearly tie."""
    num_classes = canvas.shape[0]
    cells = canvas.shape[1] * canvas.shape[2]
    values = canvas.ravel()
    used, pixel_cell = np.unique(grid.row_cell[ys] * counts.shape[1] + grid.col_cell[xs],
                                 return_inverse=True)
    pixel_cell = pixel_cell.reshape(-1)
    per_cell = counts.ravel()[used]
    # Each cell's contenders in class order (so the argmax keeps the first of equal scores),
    # padded with its first contender; the padding scores -inf below.
    cell, klass = np.nonzero(contenders.reshape(num_classes, -1)[:, used].T)
    starts = np.cumsum(per_cell) - per_cell
    classes = np.broadcast_to(klass[starts], (int(per_cell.max()), len(used))).copy()
    classes[np.arange(len(cell)) - starts[cell], cell] = klass
    candidates = classes[:, pixel_cell]
    scores = grid.interpolate(values, candidates * cells, ys, xs)
    scores[np.arange(len(classes))[:, None] >= per_cell[pixel_cell]] = -np.inf
    best = scores.argmax(0)
    labels = np.take_along_axis(candidates, best[None], 0)[0]
    top = np.take_along_axis(scores, best[None], 0)[0]
    margin = np.float32(TIE_MARGIN) * np.maximum(np.abs(top), np.float32(1))
    near = np.count_nonzero(scores >= top - margin, axis=0) > 1
    if near.any():
        every = np.arange(num_classes)[:, None] * cells
        labels[near] = softmax(grid.interpolate(values, every, ys[near], xs[near])).argmax(0)
    return labels


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

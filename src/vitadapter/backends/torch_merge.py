"""The slide merge of :mod:`vitadapter.pipeline.merge` in torch, on the crop runner's device.

Same arithmetic as the numpy path, so the same labels bit for bit: the window scores upsampled
into the canvas and averaged (:meth:`DeviceSlide.canvas_rows`), the canvas resized to the photo
(float64 tap sums rounded to float32, :mod:`.torch_resample`), the softmax with ``exp`` in
float64, every sum over classes in class order, the argmax taking the first maximum. It runs in
bands of output rows as the numpy merge does, and the window scores never leave the device.

With one view (no TTA) the full ``classes x H x W`` volume is never resized (the numpy merge's
cell bound, :mod:`vitadapter.pipeline.merge`): where one class's minimum over a pixel's 2x2
canvas cell beats every other class's maximum by the tie margin, that class is the label and
only its score is interpolated; the other pixels (class boundaries) get every class's score
(cheap on an accelerator) and, where two nearly tie, the exact softmax. The labels are exact; the
confidences are exact on the boundary pixels and, elsewhere, use the interpolated sum of the
canvas's class scores in place of the sum of the interpolated scores (equal up to float32
rounding).

The dinov3 pipeline's canvas (:class:`~vitadapter.pipeline.windows.SummedScores`) is summed on
the device as the crop scores arrive, with the numpy path's arithmetic, and merged here alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config.schema import Pipeline
from ..errors import InferenceError
from ..pipeline.merge import (
    BAND_BYTES,
    NON_FINITE,
    TIE_MARGIN,
    LabelMap,
    one_view_band_rows,
    spans,
)
from ..pipeline.preprocess import View
from ..pipeline.windows import SummedScores, Window, batches, open_slide
from .torch_resample import Taps, device_taps, lerp, resize_rows, resize_width

# A band's temporaries on a GPU (the CPU keeps the numpy path's budget).
CUDA_BAND_BYTES = 1 << 30
# Above this share of contested canvas cells a one-view band resizes every class instead.
CONTESTED_CELLS = 0.25


@dataclass
class DeviceSlide:
    """The window scores of one view, kept on their device, and everything needed to merge
    them (:class:`~vitadapter.pipeline.windows.SlideScores` in torch)."""

    view: View
    windows: list[Window]
    scores: list[torch.Tensor]  # (C, h, w) float32 per window, at the head's resolution
    crop: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return self.scores[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.scores[0].device

    def add(self, scores: torch.Tensor) -> None:
        """The next window's scores."""
        self.scores.append(scores)

    def score_arrays(self) -> list[torch.Tensor]:
        return self.scores

    def canvas_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the averaged canvas, cropped to the unpadded width."""
        width = self.view.valid_shape[1]
        total = torch.zeros((self.num_classes, stop - start, width), device=self.device)
        count = torch.zeros((stop - start, width), device=self.device)
        for window, scores in zip(self.windows, self.scores, strict=True):
            lo, hi = max(start, window.y1), min(stop, window.y2)
            if lo >= hi or window.x1 >= width:
                continue
            taps = device_taps(scores.shape[1], self.crop[0], self.device).rows(
                lo - window.y1, hi - window.y1)
            first, last = taps.span
            band = resize_width(scores[:, first:last], self.crop[1])
            upsampled = resize_rows(band, taps, offset=first)
            x2 = min(window.x2, width)
            total[:, lo - start:hi - start, window.x1:x2] += upsampled[:, :, :x2 - window.x1]
            count[lo - start:hi - start, window.x1:x2] += 1
        return total / count

    def canvas(self) -> torch.Tensor:
        return self.canvas_rows(0, self.view.valid_shape[0])


def window_crops(image: torch.Tensor, windows: Sequence[Window]) -> torch.Tensor:
    """The crops of ``windows`` from a (3, H, W) image, stacked."""
    return torch.stack([image[:, w.y1:w.y2, w.x1:w.x2] for w in windows])


def run_windows_on_device(view: View, forward: Callable[[torch.Tensor], torch.Tensor],
                          device: torch.device, crop: tuple[int, int],
                          stride: tuple[int, int], batch_size: int = 1,
                          pipeline: Pipeline = "mmseg") -> DeviceSlide | SummedScores:
    """:func:`~vitadapter.pipeline.windows.run_windows` with the image and the scores on
    ``device``; ``forward`` maps a crop batch to its class scores there."""
    image = torch.from_numpy(view.image).to(device)
    slide = open_slide(view, crop, stride, pipeline, DeviceSlide)
    for chunk in batches(slide.windows, max(1, batch_size)):
        for scores in forward(window_crops(image, chunk)).unbind(0):
            slide.add(scores)
    return slide


def check_finite_on_device(slides: Sequence[DeviceSlide | SummedScores]) -> None:
    """:func:`~vitadapter.pipeline.merge.check_finite` on the slides' device (one sync)."""
    if not bool(torch.stack([torch.isfinite(s).all() for slide in slides
                             for s in slide.score_arrays()]).all()):
        raise InferenceError(NON_FINITE)


def merge_on_device(slides: Sequence[DeviceSlide | SummedScores],
                    band_rows: int | None = None, *, logits: bool = False) -> LabelMap:
    """:func:`~vitadapter.pipeline.merge.merge_views` on the slides' device (``logits``: the
    scores are class logits, as UperNet's, and the posterior is their softmax)."""
    height, width = slides[0].view.original_shape
    num_classes, device = slides[0].num_classes, slides[0].device
    budget = CUDA_BAND_BYTES if device.type == "cuda" else BAND_BYTES
    one_view = len(slides) == 1 and not logits
    every_class_rows = band_rows or max(1, budget // (8 * num_classes * width * 2))
    if band_rows is None:
        band_rows = one_view_band_rows(slides[0].view, slides[0].crop[1], num_classes, budget) \
            if one_view else every_class_rows
    labels = torch.empty((height, width), dtype=torch.int64, device=device)
    confidence_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
    pixel_count = torch.zeros(num_classes, dtype=torch.int64, device=device)
    row_taps = [device_taps(s.view.valid_shape[0], height, device) for s in slides]
    for start, stop in spans(0, height, band_rows):
        band = _one_view_band(slides[0], row_taps[0].rows(start, stop), width, budget) \
            if one_view else None
        parts = [(start, band)] if band is not None else [
            (lo, _views_band([_band_logits(s, t.rows(lo, hi), width)
                              for s, t in zip(slides, row_taps, strict=True)],
                             softmax if logits else _normalised))
            for lo, hi in spans(start, stop, every_class_rows)]
        for lo, (band_labels, winning) in parts:
            labels[lo:lo + len(band_labels)] = band_labels
            flat = band_labels.flatten()
            confidence_sum += torch.bincount(flat, weights=winning.flatten().double(),
                                             minlength=num_classes)
            pixel_count += torch.bincount(flat, minlength=num_classes)
    confidence = torch.where(pixel_count > 0, confidence_sum / pixel_count.clamp_min(1), 0.0)
    return LabelMap(labels.cpu().numpy(), confidence.float().cpu().numpy(),
                    pixel_count.cpu().numpy())


def _band_logits(slide: DeviceSlide | SummedScores, taps: Taps, width: int) -> torch.Tensor:
    first, last = taps.span
    logits = resize_rows(resize_width(slide.canvas_rows(first, last), width), taps,
                         offset=first)
    return logits.flip(-1) if slide.view.flipped else logits


def _views_band(bands: list[torch.Tensor],
                posterior_of: Callable[[torch.Tensor], torch.Tensor],
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and winning posteriors of a band from every view's resized scores."""
    probs, posterior = softmax(bands[0]), posterior_of(bands[0])
    for scores in bands[1:]:
        probs = probs + softmax(scores)
        posterior = posterior + posterior_of(scores)
    labels = (probs / float(len(bands))).argmax(0)
    return labels, posterior.gather(0, labels[None])[0] / len(bands)


def _one_view_band(slide: DeviceSlide | SummedScores, taps: Taps, width: int,
                   budget: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Labels and winning posteriors of a band of the single view (see the module doc), or
    None where too many canvas cells have several contenders for the shortcut to pay."""
    first, last = taps.span
    canvas = slide.canvas_rows(first, last)
    num_classes, rows, cols = canvas.shape
    column = device_taps(cols, width, canvas.device)
    j0, j1, wc0, wc1 = column.index0, column.index1, column.weight0, column.weight1
    if slide.view.flipped:
        j0, j1, wc0, wc1 = (t.flip(0) for t in (j0, j1, wc0, wc1))
    i0, i1 = taps.index0 - first, taps.index1 - first
    wr0, wr1 = taps.weight0[:, None], taps.weight1[:, None]

    def interpolate(values: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
        """Each pixel's bilinear value from (rows * cols) ``values`` at ``offset``."""
        at = offset + i0[:, None] * cols
        top = lerp(values[at + j0], wc0, values[at + j1], wc1)
        at = offset + i1[:, None] * cols
        bottom = lerp(values[at + j0], wc0, values[at + j1], wc1)
        return lerp(top, wr0, bottom, wr1)

    scale = max(1.0, float(canvas.abs().max()))
    winner, certain = _cell_winners(canvas, TIE_MARGIN * scale)
    if float(certain.float().mean()) < 1 - CONTESTED_CELLS:
        return None
    labels = winner[i0][:, j0]
    cell = rows * cols
    score = interpolate(canvas.flatten(), labels * cell)
    total = interpolate(_class_sum(canvas).flatten())
    winning = score / total.clamp_min(1e-12)

    ys, xs = (~certain[i0][:, j0]).nonzero(as_tuple=True)
    chunk = max(1, budget // (num_classes * 8 * 8))
    for k in range(0, len(ys), chunk):
        y, x = ys[k:k + chunk], xs[k:k + chunk]
        ry0, ry1, cx0, cx1 = i0[y], i1[y], j0[x], j1[x]
        top = lerp(canvas[:, ry0, cx0], wc0[x], canvas[:, ry0, cx1], wc1[x])
        bottom = lerp(canvas[:, ry1, cx0], wc0[x], canvas[:, ry1, cx1], wc1[x])
        logits = lerp(top, taps.weight0[y], bottom, taps.weight1[y])
        label = argmax_softmax(logits)
        labels[y, x] = label
        winning[y, x] = (logits.gather(0, label[None])[0]
                         / _class_sum(logits).clamp_min(1e-12))
    return labels, winning


def _cell_winners(canvas: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per canvas cell (a row and column and the next ones): the class whose minimum over the
    cell is highest, and whether every other class's maximum stays ``margin`` below it."""
    padded = F.pad(canvas[None], (0, 1, 0, 1), mode="replicate")[0]
    high = torch.maximum(padded[:, :-1], padded[:, 1:])
    high = torch.maximum(high[:, :, :-1], high[:, :, 1:])
    low = torch.minimum(padded[:, :-1], padded[:, 1:])
    low = torch.minimum(low[:, :, :-1], low[:, :, 1:])
    best, winner = low.max(0)
    contenders = (high >= best - margin).sum(0)
    return winner, contenders == 1


def argmax_softmax(logits: torch.Tensor) -> torch.Tensor:
    """:func:`vitadapter.pipeline.merge.argmax_softmax` in torch."""
    top = logits.max(0).values
    labels = logits.argmax(0)
    margin = TIE_MARGIN * top.abs().clamp_min(1)
    near = (logits >= top - margin).sum(0) > 1
    if bool(near.any()):
        labels[near] = softmax(logits[:, near]).argmax(0)
    return labels


def softmax(x: torch.Tensor) -> torch.Tensor:
    """:func:`vitadapter.pipeline.merge.softmax` over dim 0, bit for bit."""
    e = torch.exp((x - x.max(0, keepdim=True).values).double()).float()
    return e / _class_sum(e)


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    return scores / _class_sum(scores).clamp_min(1e-12)


def _class_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over dim 0 in index order, as numpy sums a leading axis (torch's own reduction
    order differs, and with it the last bit)."""
    total = x[0].clone()
    for row in x[1:]:
        total += row
    return total

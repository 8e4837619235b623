"""Segment a stream of photos with the device kept busy.

Photos are decoded and preprocessed ahead of the model (in ``DataLoader`` worker processes with
``workers > 0``, else in a background thread); the slide windows of consecutive photos share
forward passes of up to ``batch_windows`` crops; each photo is merged (on the device for the
PyTorch backend) as soon as its last window is scored. Results come out in input order, each
equal to :meth:`Segmenter.segment` of that photo (bit for bit with ``batch_windows=1``; larger
batches may round the model's sums differently in the last bit, as in the one-photo path).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageError
from .pipeline.images import load_image
from .pipeline.merge import LabelMap, merge_views
from .pipeline.preprocess import View, augmented_views
from .pipeline.result import SegmentationResult
from .pipeline.windows import SlideScores, Window, open_slide
from .segmenter import device_merge_of

if TYPE_CHECKING:
    from .segmenter import Segmenter

PREFETCH = 4  # photos decoded ahead per worker (or by the thread)


@dataclass
class Prepared:
    """One photo decoded and preprocessed, or the error that stopped it."""

    index: int
    rgb: np.ndarray | None = None
    views: list[View] = field(default_factory=list)
    error: Exception | None = None


class PreparedPhotos:
    """A map-style dataset of photos to :class:`Prepared` items (picklable for workers)."""

    def __init__(self, images: Sequence[Any], segmenter: Segmenter, tta: bool) -> None:
        self.images, self.cfg, self.tta = images, segmenter.config.inference, tta

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Prepared:
        try:
            rgb = load_image(self.images[index])
            return Prepared(index, rgb, augmented_views(rgb, self.cfg, self.tta))
        except (ImageError, OSError, ValueError) as exc:
            return Prepared(index, error=exc)


def _first(items: list[Prepared]) -> Prepared:
    return items[0]


def prepared(images: Sequence[Any], segmenter: Segmenter, tta: bool,
             workers: int) -> Iterator[Prepared]:
    """The photos prepared ahead of use: by ``workers`` DataLoader processes, or one thread."""
    dataset = PreparedPhotos(images, segmenter, tta)
    if workers > 0:
        from torch.utils.data import DataLoader

        yield from DataLoader(dataset, batch_size=1, num_workers=workers,  # type: ignore
                              collate_fn=_first, prefetch_factor=PREFETCH)
        return
    ahead: queue.Queue[Prepared | None] = queue.Queue(PREFETCH)

    def fill() -> None:
        for i in range(len(dataset)):
            ahead.put(dataset[i])
        ahead.put(None)

    threading.Thread(target=fill, daemon=True).start()
    while (item := ahead.get()) is not None:
        yield item


@dataclass
class _Photo:
    item: Prepared
    start: float
    slides: list[Any] = field(default_factory=list)
    missing: int = 0  # windows still to score
    total: int = 0


class _Windows:
    """Crops of prepared views and where their scores go, for either backend."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.runner = segmenter.runner
        self.cfg = segmenter.config.inference
        self.forward = device_merge_of(self.runner, "forward")  # the PyTorch backend's

    def open(self, photo: _Photo) -> list[tuple[Any, Any, Window]]:
        """Set up the photo's slides; its (slide, image, window) crops to score."""
        cfg = self.cfg
        crops: list[tuple[Any, Any, Window]] = []
        for view in photo.item.views:
            image: Any = view.image
            slide: Any
            if self.forward is not None:
                import torch

                from .backends.torch_merge import DeviceSlide

                image = torch.from_numpy(view.image).to(self.runner.device)
                slide = open_slide(view, cfg.crop_size, cfg.stride, cfg.pipeline, DeviceSlide)
            else:
                slide = open_slide(view, cfg.crop_size, cfg.stride, cfg.pipeline, SlideScores)
            photo.slides.append(slide)
            crops.extend((slide, image, w) for w in slide.windows)
        photo.missing = len(crops)
        return crops

    def score(self, crops: list[tuple[Any, Any, Window]]) -> list[Any]:
        """The scores of same-shaped crops."""
        if self.forward is not None:
            import torch

            from .backends.torch_merge import window_crops

            with torch.inference_mode():
                crop_batch = torch.cat([window_crops(image, [w]) for _, image, w in crops])
                return list(self.forward(crop_batch).unbind(0))
        batch = np.stack([image[:, w.y1:w.y2, w.x1:w.x2] for _, image, w in crops])
        return list(np.asarray(self.runner(batch), dtype=np.float32))

    def merge(self, photo: _Photo) -> LabelMap:
        logits = self.runner.info.config.head.kind == "upernet"  # class logits, not scores
        if self.forward is not None:
            import torch

            from .backends.torch_merge import merge_on_device

            with torch.inference_mode():
                return merge_on_device(photo.slides, logits=logits)
        return merge_views(photo.slides, logits=logits)


def segment_stream(segmenter: Segmenter, images: Iterable[Any], *, workers: int = 0,
                   batch_windows: int | None = None, tta: bool | None = None,
                   on_windows: Callable[[int, int, int], None] | None = None,
                   ) -> Iterator[tuple[int, SegmentationResult | Exception]]:
    """``(index, result)`` for each image (a path, array or PIL image as
    :func:`~vitadapter.pipeline.images.load_image` takes), in order; ``result`` is the
    exception instead where the image could not be read. ``on_windows(index, done, total)``
    is called as the slide windows of a photo are scored (progress inside large photos)."""
    images = list(images)
    batch = batch_windows or segmenter.batch_windows
    windows = _Windows(segmenter)
    pending: deque[_Photo] = deque()
    queued: deque[tuple[_Photo, Any, Any, Window]] = deque()
    source = prepared(images, segmenter, segmenter.tta if tta is None else tta, workers)
    exhausted = False
    while not exhausted or queued or pending:
        while not exhausted and len(queued) < batch:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            photo = _Photo(item, time.perf_counter())
            pending.append(photo)
            if item.error is None:
                queued.extend((photo, *crop) for crop in windows.open(photo))
                photo.total = photo.missing
        if queued:
            shape = queued[0][3].shape  # a batch stacks crops of one shape
            chunk: list[tuple[_Photo, Any, Any, Window]] = []
            while queued and len(chunk) < batch and queued[0][3].shape == shape:
                chunk.append(queued.popleft())
            for (photo, slide, _, _), scores in zip(
                    chunk, windows.score([c[1:] for c in chunk]), strict=True):
                slide.add(scores)
                photo.missing -= 1
            if on_windows is not None:
                for photo in {id(c[0]): c[0] for c in chunk}.values():
                    on_windows(photo.item.index, photo.total - photo.missing, photo.total)
        while pending and (pending[0].item.error is not None or pending[0].missing == 0):
            photo = pending.popleft()
            yield photo.item.index, _finish(photo, windows, segmenter)


def _finish(photo: _Photo, windows: _Windows,
            segmenter: Segmenter) -> SegmentationResult | Exception:
    if photo.item.error is not None:
        return photo.item.error
    merged = windows.merge(photo)
    return SegmentationResult(
        label_map=merged.labels, class_names=segmenter.class_names, palette=segmenter.palette,
        confidence=merged.confidence, pixel_count=merged.pixel_count, image=photo.item.rgb,
        model=segmenter.name, seconds=time.perf_counter() - photo.start)

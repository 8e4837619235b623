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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .errors import ImageError
from .pipeline.images import load_image
from .pipeline.merge import LabelMap, check_finite, merge_views
from .pipeline.preprocess import View, augmented_views
from .pipeline.result import SegmentationResult
from .pipeline.windows import SlideScores, Window, open_slide
from .segmenter import device_merge_of

if TYPE_CHECKING:
    from .segmenter import Segmenter

PREFETCH = 4  # photos decoded ahead per worker (or by the thread)
# Exceptions that belong to one photo (its decoding, size or content): that photo's result.
# Any other exception stops the stream and reaches its consumer.
PHOTO_ERRORS = (ImageError, OSError, ValueError, MemoryError, cv2.error)


def photo_error(exc: Exception, image: Any) -> Exception:
    """``exc``, raised while preparing or merging ``image``, as that photo's error: the
    library's own kinds as they are, the others as an :class:`ImageError` naming the photo."""
    if isinstance(exc, ImageError | OSError | ValueError):
        return exc
    name = str(image) if isinstance(image, str | Path) else f"image of type {type(image).__name__}"
    if isinstance(exc, MemoryError):
        return ImageError(f"{name}: not enough memory to segment it (too large a photo for "
                          "this machine; downscale it, or refuse it with --max-pixels)")
    return ImageError(f"{name}: OpenCV failed on it ({getattr(exc, 'err', None) or exc})")


@dataclass
class Prepared:
    """One photo decoded and preprocessed, or the error that stopped it."""

    index: int
    rgb: np.ndarray | None = None
    views: list[View] = field(default_factory=list)
    error: Exception | None = None


class PreparedPhotos:
    """A map-style dataset of photos to :class:`Prepared` items (picklable for workers)."""

    def __init__(self, images: Sequence[Any], segmenter: Segmenter, tta: bool,
                 exif: bool = True) -> None:
        self.images, self.cfg, self.tta = images, segmenter.config.inference, tta
        self.exif = exif

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Prepared:
        try:
            rgb = load_image(self.images[index], exif=self.exif)
            return Prepared(index, rgb, augmented_views(rgb, self.cfg, self.tta))
        except PHOTO_ERRORS as exc:
            return Prepared(index, error=photo_error(exc, self.images[index]))


def _first(items: list[Prepared]) -> Prepared:
    return items[0]


def prepared(images: Sequence[Any], segmenter: Segmenter, tta: bool,
             workers: int, exif: bool = True) -> Iterator[Prepared]:
    """The photos prepared ahead of use: by ``workers`` DataLoader processes, or one thread.
    An exception that belongs to no one photo (anything but :data:`PHOTO_ERRORS`) is raised
    here, in the consumer, instead of ending the thread and leaving the consumer waiting."""
    dataset = PreparedPhotos(images, segmenter, tta, exif)
    if workers > 0:
        from torch.utils.data import DataLoader

        yield from DataLoader(dataset, batch_size=1, num_workers=workers,  # type: ignore
                              collate_fn=_first, prefetch_factor=PREFETCH)
        return
    ahead: queue.Queue[Prepared | BaseException | None] = queue.Queue(PREFETCH)
    stop = threading.Event()

    def fill() -> None:
        try:
            for i in range(len(dataset)):
                if stop.is_set():
                    return
                ahead.put(dataset[i])
            ahead.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            ahead.put(exc)

    threading.Thread(target=fill, daemon=True).start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early: let the thread end instead of filling the queue
        stop.set()
        while not ahead.empty():
            ahead.get_nowait()


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

            from .backends.torch_merge import check_finite_on_device, merge_on_device

            check_finite_on_device(photo.slides)
            with torch.inference_mode():
                try:
                    return merge_on_device(photo.slides, logits=logits)
                except torch.cuda.OutOfMemoryError as exc:  # this photo's, as on the CPU
                    torch.cuda.empty_cache()
                    raise MemoryError(str(exc)) from None
        check_finite(photo.slides)
        return merge_views(photo.slides, logits=logits)


def segment_stream(segmenter: Segmenter, images: Iterable[Any], *, workers: int = 0,
                   batch_windows: int | None = None, tta: bool | None = None,
                   on_windows: Callable[[int, int, int], None] | None = None,
                   exif: bool = True,
                   ) -> Iterator[tuple[int, SegmentationResult | Exception]]:
    """``(index, result)`` for each image (a path, array or PIL image as
    :func:`~vitadapter.pipeline.images.load_image` takes), in order; ``result`` is the
    exception instead where the image could not be read or was too large for the memory
    (:data:`PHOTO_ERRORS`); any other exception ends the stream. ``on_windows(index, done,
    total)`` is called as the slide windows of a photo are scored (progress inside large
    photos). ``exif=False`` reads image files as stored, ignoring their EXIF orientation (for
    dataset images, whose annotations were drawn on the stored pixels)."""
    images = list(images)
    batch = batch_windows or segmenter.batch_windows
    windows = _Windows(segmenter)
    pending: deque[_Photo] = deque()
    queued: deque[tuple[_Photo, Any, Any, Window]] = deque()
    source = prepared(images, segmenter, segmenter.tta if tta is None else tta, workers, exif)
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
                try:
                    queued.extend((photo, *crop) for crop in windows.open(photo))
                except MemoryError as exc:  # its image on the device, e.g.
                    item.error = photo_error(exc, images[item.index])
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
            yield photo.item.index, _finish(photo, windows, segmenter, images)


def _finish(photo: _Photo, windows: _Windows, segmenter: Segmenter,
            images: list[Any]) -> SegmentationResult | Exception:
    if photo.item.error is not None:
        return photo.item.error
    try:
        merged = windows.merge(photo)
    except MemoryError as exc:
        return photo_error(exc, images[photo.item.index])
    return SegmentationResult(
        label_map=merged.labels, class_names=segmenter.class_names, palette=segmenter.palette,
        confidence=merged.confidence, pixel_count=merged.pixel_count, image=photo.item.rgb,
        model=segmenter.name, seconds=time.perf_counter() - photo.start)

"""Training batches: a split's samples through the training pipeline, in a seeded order.

The order is an endless stream of epochs, each a permutation of the split drawn from
``(seed, epoch)``; batch ``i`` is positions ``i * B .. (i + 1) * B - 1`` of that stream (a
batch may straddle two epochs). Each sample's augmentation draws from a generator seeded with
``(seed, epoch, index)``. Batch ``i`` is therefore a function of (seed, batch size, dataset,
i) alone: the same under any number of workers or processes, and a resumed run continues with
exactly the batches it would have seen.

Under ``W`` processes (``torchrun``) the stream is cut into global batches of ``W * B`` and
rank ``r`` takes positions ``r * B .. (r + 1) * B - 1`` of each: ``W`` processes with batch
``B`` see the samples (and augmentations) of one process with batch ``W * B``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config.schema import InferenceConfig
from ..errors import DatasetError, ImageError
from ..pipeline.images import load_image
from .custom import open_layout
from .datasets import IGNORE_INDEX, EvalDataset, Sample
from .transforms import TrainPipelineConfig, train_transform

logger = logging.getLogger(__name__)

Key = tuple[int, int]  # (epoch, sample index)
_ORDER_STREAM = 0  # generator key part for the epoch order
_SAMPLE_STREAM = 1  # ... and for a sample's augmentation


def open_split(root: str | Path, dataset: str, split: str, *,
               progress: bool = True) -> EvalDataset:
    """A split of the ``custom`` layout or of one of the evaluation layouts, its annotations
    checked up front (:func:`check_annotations`)."""
    data = open_layout(root, dataset, split)
    check_annotations(data, progress=progress)
    return data


def check_annotations(dataset: EvalDataset, *, progress: bool = True) -> None:
    """Read every annotation of ``dataset`` once, before a model is built: a value outside the
    layout's classes stops here, naming the file and the value; annotations without a
    labelled pixel (255, ignored, everywhere) are reported, and refused when all are."""
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import Progress

    samples = dataset.samples
    unlabelled = []
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, \
            Progress(len(samples), f"checking {dataset.split} annotations",
                     enabled=progress and len(samples) >= 1000) as bar:
        for sample, labelled in zip(samples, pool.map(
                lambda sample: labelled_pixels(dataset, sample), samples), strict=True):
            if not labelled:
                unlabelled.append(sample.label)
            bar.advance()
    if len(unlabelled) == len(samples):
        raise DatasetError(f"every annotation of {dataset.label_dir} is 255 (ignored) "
                           f"everywhere: nothing to learn ({dataset.layout.label_note})")
    if unlabelled:
        more = f" and {len(unlabelled) - 1} more" if len(unlabelled) > 1 else ""
        logger.warning("%d of %d annotations label no pixel (255, ignored, everywhere), so "
                       "their images teach nothing: %s%s", len(unlabelled), len(samples),
                       unlabelled[0], more)


def labelled_pixels(dataset: EvalDataset, sample: Sample) -> int:
    """How many pixels of ``sample``'s annotation are not ignored; a value the layout does
    not allow raises :class:`DatasetError` naming the file and the value. 8-bit annotations
    are counted from Pillow's histogram (no per-pixel table lookup)."""
    table = dataset.layout.label_table
    counts = None
    try:
        with Image.open(sample.label) as img:
            if img.mode in ("L", "P"):
                counts = np.asarray(img.histogram(), np.int64)
    except (OSError, SyntaxError, ValueError):
        pass  # read_label says what is wrong
    if counts is None or counts[table < 0].any():
        return int((dataset.read_label(sample) != IGNORE_INDEX).sum())
    return int(counts[(table >= 0) & (table != IGNORE_INDEX)].sum())


@lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The sample indices of ``epoch`` in training order."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(size)


def batch_keys(seed: int, size: int, batch_size: int, iteration: int, rank: int = 0,
               world_size: int = 1) -> list[Key]:
    """The (epoch, index) keys of batch ``iteration`` of process ``rank`` of ``world_size``."""
    keys = []
    first = (iteration * world_size + rank) * batch_size
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, size)
        keys.append((epoch, int(epoch_order(seed, epoch, size)[offset])))
    return keys


class BatchOrder(Sampler[list[Key]]):
    """The batches from ``start`` to ``stop`` (exclusive) of one process, as lists of keys."""

    def __init__(self, seed: int, size: int, batch_size: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.seed, self.size, self.batch_size = seed, size, batch_size
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[Key]]:
        for iteration in range(self.start, self.stop):
            yield batch_keys(self.seed, self.size, self.batch_size, iteration, self.rank,
                             self.world_size)


class TrainDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples of ``dataset`` through the training pipeline, indexed by (epoch, index)."""

    def __init__(self, dataset: EvalDataset, pipeline: TrainPipelineConfig,
                 norm: InferenceConfig, seed: int) -> None:
        self.dataset, self.pipeline, self.norm, self.seed = dataset, pipeline, norm, seed

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The RGB image and train-id label map of sample ``index``, sizes checked."""
        sample = self.dataset.samples[index]
        try:  # the stored pixels, on which the annotation was drawn: no EXIF rotation
            rgb = load_image(sample.image, exif=False)
        except ImageError as exc:
            raise DatasetError(str(exc)) from None  # it names the file
        label = self.dataset.read_label(sample)
        if rgb.shape[:2] != label.shape:
            raise DatasetError(
                f"image {sample.image} is {rgb.shape[1]}x{rgb.shape[0]} but its annotation "
                f"{sample.label} is {label.shape[1]}x{label.shape[0]} (width x height): they "
                "must have the same size")
        return rgb, label

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        rgb, label = self.read(index)
        rng = np.random.default_rng([self.seed, _SAMPLE_STREAM, epoch, index])
        try:
            image, labels = train_transform(rgb, label, self.pipeline, self.norm, rng)
        except (ValueError, cv2.error) as exc:
            sample = self.dataset.samples[index]
            raise DatasetError(
                f"image {sample.image} ({rgb.shape[1]}x{rgb.shape[0]}) cannot go through the "
                f"training pipeline: {getattr(exc, 'err', None) or exc}; remove it, or crop "
                "or pad it to a less extreme shape") from None
        return torch.from_numpy(image), torch.from_numpy(labels.astype(np.int64))


def train_loader(dataset: TrainDataset, batch_size: int, start: int, stop: int,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches ``start .. stop - 1`` of process ``rank``: images (B, 3, S, S) float32, labels
    (B, S, S) int64."""
    order = BatchOrder(dataset.seed, len(dataset), batch_size, start, stop, rank, world_size)
    # Its own generator: creating the loader must not draw from the global torch RNG, which
    # the training step's randomness (drop path) uses and a resumed run restores.
    return DataLoader(dataset, batch_sampler=order, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator())

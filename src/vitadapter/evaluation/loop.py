"""The evaluation loop: predict each image of a dataset, count areas, sum them over processes.

Torch-free: the model is a ``predict(image_path) -> label map`` callable and the processes are
a :class:`~vitadapter.distributed.Shard` (``TorchShard`` over torch.distributed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.datasets import EvalDataset, Sample
from ..distributed import Shard
from ..errors import DatasetError, EvaluationError
from ..progress import Progress
from .metrics import Areas, Metrics, compute_metrics, intersect_and_union
from .records import PARTIAL_DIR, RecordLog, load_records, record_files

logger = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"

Predictor = Callable[[Path], np.ndarray]
# Label maps of several images in order (a pipelined predictor: see vitadapter.stream)
StreamPredictor = Callable[[list[Path]], Iterable[np.ndarray]]


@dataclass(frozen=True)
class EvalResult:
    areas: Areas  # totals over ``images`` images
    images: int
    new_images: int  # evaluated by this run, all processes together
    seconds: float

    @property
    def metrics(self) -> Metrics:
        return compute_metrics(self.areas)


def run_evaluation(predict: Predictor, dataset: EvalDataset, *, settings: dict[str, Any],
                   out: Path | None = None, resume: bool = False, limit: int | None = None,
                   save_predictions: bool = False, shard: Shard | None = None,
                   progress: bool = True,
                   predict_stream: StreamPredictor | None = None) -> EvalResult:
    """Evaluate the first ``limit`` images (all by default) of ``dataset``.

    With ``out``, every finished image is recorded under ``out/partial`` (with ``settings``,
    which identify the run); ``resume`` counts the images recorded there by earlier runs with
    the same settings instead of predicting them again. ``save_predictions`` writes each label
    map to ``out/predictions/<name>.png``. Under several processes each one predicts every
    ``world_size``-th remaining image and the areas are summed over the processes.
    ``predict_stream``, when given, predicts this process's images in place of ``predict``.
    """
    start = time.monotonic()
    shard = shard or Shard()
    if (resume or save_predictions) and out is None:
        raise EvaluationError("resuming and saving predictions need an output directory")
    selection = dataset.samples[:limit] if limit else dataset.samples
    done = _earlier_records(out, resume, settings, dataset.num_classes)
    selected = {s.name for s in selection}
    done = {name: areas for name, areas in done.items() if name in selected}
    todo = [s for s in selection if s.name not in done]
    mine = todo[shard.rank::shard.world_size]
    if shard.is_main:
        logger.info("%s %s: %d image(s)%s; %d to evaluate%s", dataset.name, dataset.split,
                    len(selection), f", {len(done)} done by an earlier run" if done else "",
                    len(todo), f" over {shard.world_size} processes"
                    if shard.world_size > 1 else "")
    shard.barrier()  # every process has read the records before any writes

    base = sum(done.values(), Areas.zeros(dataset.num_classes))
    local = Areas.zeros(dataset.num_classes)
    log = (RecordLog(out / PARTIAL_DIR / f"rank-{shard.rank}.jsonl", settings)
           if out is not None else None)
    label = "evaluate" if shard.world_size == 1 else f"evaluate (rank 0 of {shard.world_size})"
    try:
        with Progress(len(mine), label, enabled=progress and shard.is_main) as bar:
            preds = (predict_stream([s.image for s in mine]) if predict_stream is not None
                     else (predict(s.image) for s in mine))
            for sample, pred in zip(mine, preds, strict=True):
                areas = _evaluate_image(pred, dataset, sample,
                                        out if save_predictions else None)
                if log is not None:
                    log.append(sample.name, areas)
                local = local + areas
                bar.advance(note=f"mIoU {compute_metrics(base + local).miou * 100:.2f}")
    finally:
        if log is not None:
            log.close()
    totals = Areas.from_array(shard.sum(local.to_array())) + base
    new_images = int(shard.sum(np.array([len(mine)], np.int64))[0])
    return EvalResult(totals, len(done) + new_images, new_images, time.monotonic() - start)


def _earlier_records(out: Path | None, resume: bool, settings: dict[str, Any],
                     num_classes: int) -> dict[str, Areas]:
    if out is None:
        return {}
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"--out {out} is a file; give a directory")
    if not resume:
        if record_files(out):
            raise EvaluationError(f"{out / PARTIAL_DIR} holds an earlier evaluation: pass "
                                  "--resume to continue it, or use another --out")
        return {}
    return load_records(out, settings, num_classes)


def _evaluate_image(pred: np.ndarray, dataset: EvalDataset, sample: Sample,
                    save_to: Path | None) -> Areas:
    label = dataset.read_label(sample)
    if pred.shape != label.shape:
        raise DatasetError(f"image {sample.image} is {pred.shape[1]}x{pred.shape[0]} but its "
                           f"annotation {sample.label} is {label.shape[1]}x{label.shape[0]} "
                           "(width x height): they must have the same size")
    if save_to is not None:
        path = save_to / PREDICTIONS_DIR / f"{sample.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        dtype = np.uint8 if dataset.num_classes <= 256 else np.uint16
        Image.fromarray(pred.astype(dtype)).save(path)
    return intersect_and_union(pred, label, dataset.num_classes)

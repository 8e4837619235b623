"""``vitadapter evaluate --data-root DIR --dataset NAME``: aAcc / mIoU / mAcc as mmseg computes
them, resumable, and shared over processes under ``torchrun``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config.presets import PRESETS
from ..data.custom import CLASSES_FILE, CUSTOM, LAYOUT_NAMES, open_layout
from ..data.datasets import IGNORE_INDEX
from ..errors import EvaluationError
from ..evaluation import LAYOUTS, EvalDataset, run_evaluation
from ..evaluation.report import format_tables, write_reports
from ..pipeline.images import load_image
from ..segmenter import Segmenter
from ..stream import segment_stream
from .common import add_model_arguments, prediction_settings, segmenter_from_args

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="measure aAcc / mIoU / mAcc on a dataset",
        description="Segment every image of a dataset split and compute aAcc, per-class IoU "
                    "and Acc, mIoU and mAcc exactly as mmseg 0.x does. Under torchrun "
                    "--nproc-per-node N each process evaluates a share of the images.")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR",
                   help="dataset root (see the README for each layout)")
    p.add_argument("--dataset", required=True, choices=LAYOUT_NAMES, metavar="LAYOUT",
                   help="the dataset's layout (see the README for each): "
                        + "; ".join(f"{name} (annotations *{layout.label_suffix}: "
                                    f"{layout.label_note})" for name, layout in LAYOUTS.items())
                        + f"; {CUSTOM} (your own data as `train` reads it: {CLASSES_FILE}, "
                          "images/SPLIT, annotations/SPLIT; e.g. a fine-tuned model's val "
                          "split)")
    p.add_argument("--split", default="val",
                   help="val (default) or train, or a directory name such as val2017")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images (sorted by name)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write metrics.json and metrics.csv here, and record each finished "
                        "image under DIR/partial so that --resume can continue")
    p.add_argument("--resume", action="store_true",
                   help="count the images recorded under --out by an earlier run with the "
                        "same settings instead of evaluating them again")
    p.add_argument("--save-predictions", action="store_true",
                   help="also write each predicted label map to DIR/predictions/<name>.png")
    add_model_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import shard_from_environment

    if args.limit is not None and args.limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {args.limit}")
    if (args.resume or args.save_predictions) and args.out is None:
        raise EvaluationError("--resume and --save-predictions need --out DIR")
    dataset = open_layout(args.data_root, args.dataset, args.split)
    if args.model is None and args.config is None:
        args.model = default_preset(dataset)
    shard, args.device = shard_from_environment(args.device)
    try:
        if not shard.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        segmenter = segmenter_from_args(args)
        check_classes(segmenter, dataset)
        settings = {
            "dataset": dataset.name, "split": dataset.split,
            "data_root": str(dataset.root.resolve()), "model": segmenter.name,
            "config": str(Path(args.config).resolve()) if args.config else None,
            "behaviour": segmenter.config.behaviour, "tta": segmenter.tta,
            **prediction_settings(args, segmenter),
        }
        result = run_evaluation(  # dataset images as stored (no EXIF rotation), as labelled
            lambda path: segmenter.segment(load_image(path, exif=False)).label_map, dataset,
            settings=settings,
            out=args.out, resume=args.resume, limit=args.limit,
            save_predictions=args.save_predictions, shard=shard, progress=not args.quiet,
            predict_stream=lambda paths: label_maps(segmenter, paths))
    finally:
        shard.close()
    if not shard.is_main:
        return 0
    print(format_tables(result.areas, dataset.class_names), end="")
    if args.out is not None:
        info: dict[str, Any] = {
            **settings, "checkpoint": (str(Path(args.checkpoint).resolve()) if args.checkpoint
                                       else "release weights"),
            **({"backbone_checkpoint": str(Path(args.backbone_checkpoint).resolve())}
               if args.backbone_checkpoint else {}),
            "images": result.images, "images_in_split": len(dataset.samples),
            "limit": args.limit, "ignore_index": IGNORE_INDEX, "device": segmenter.device,
            "processes": shard.world_size, "seconds": round(result.seconds, 1),
            "vitadapter": __version__,
        }
        write_reports(args.out, result.areas, dataset.class_names, info)
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'metrics.csv'}",
              file=sys.stderr)
    return 0


def label_maps(segmenter: Segmenter, paths: list[Path]) -> Iterator[np.ndarray]:
    """The label maps of ``paths`` through the pipelined stream (an unreadable image stops
    the evaluation, as in the one-photo path)."""
    for _, result in segment_stream(segmenter, paths, exif=False):
        if isinstance(result, Exception):
            raise result
        yield result.label_map


def check_classes(segmenter: Segmenter, dataset: EvalDataset) -> None:
    """The model must predict the dataset's classes: their number, and for a ``custom``
    dataset their names where the model carries some (a fine-tuned model does)."""
    if segmenter.config.num_classes != dataset.num_classes:
        hint = (f"pass the config.json and weights of a model trained on its {CLASSES_FILE}"
                if dataset.name == CUSTOM else "choose a matching --model")
        raise EvaluationError(
            f"the model {segmenter.name} predicts {segmenter.config.num_classes} classes "
            f"but {dataset.name} has {dataset.num_classes}: {hint}")
    if dataset.name == CUSTOM and tuple(segmenter.class_names) != dataset.class_names:
        logger.warning("the model's class names %s differ from %s's %s: class id i is "
                       "reported under the dataset's name", list(segmenter.class_names),
                       CLASSES_FILE, list(dataset.class_names))


def default_preset(dataset: EvalDataset) -> str:
    """The first released model trained on the dataset's classes."""
    if dataset.name == CUSTOM:
        raise EvaluationError(
            f"--dataset {CUSTOM} has no preset: pass the model trained on it, e.g. --config "
            "WORK_DIR/config.json --checkpoint WORK_DIR/latest.safetensors")
    for name, cfg in PRESETS.items():
        if cfg.dataset == dataset.layout.classes:
            return name
    raise EvaluationError(f"no preset for {dataset.name}: pass --model or --config")

"""``vitadapter segment INPUT... --out DIR``: label, colour and overlay PNGs plus a JSON."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageError, VitAdapterError
from ..evaluation.loop import Shard
from ..pipeline.result import SegmentationResult
from ..progress import Progress
from ..segmenter import Segmenter
from ..stream import segment_stream
from .common import add_model_arguments, add_onnx_argument, segmenter_from_args

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                  ".pgm", ".jp2"}
OUTPUTS = ("_labels.png", "_color.png", "_overlay.png", ".json")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="segment photos",
        description="Segment photos and write, per image, <stem>_labels.png (class ids), "
                    "<stem>_color.png, <stem>_overlay.png and <stem>.json.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, directories (searched recursively) or glob patterns")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_model_arguments(p)
    add_onnx_argument(p)
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--no-legend", action="store_true", help="overlay without the legend")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip images whose four outputs already exist (resume a folder)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes decoding and preprocessing photos ahead of the model "
                        "(default 0: one background thread)")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Job:
    source: Path
    stem: Path  # output path without suffix, relative to --out

    def outputs(self, out: Path) -> list[Path]:
        return [out / f"{self.stem}{suffix}" for suffix in OUTPUTS]


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise VitAdapterError(f"--out {out} is a file; give a directory")
    if not 0.0 <= args.alpha <= 1.0:
        raise VitAdapterError(f"--alpha must lie in [0, 1], got {args.alpha}")
    jobs, skipped = collect_jobs(args.inputs)
    for path in skipped:
        logger.info("skipping %s: not an image file (by its extension)", path)
    if not jobs:
        raise VitAdapterError("no images found in " + " ".join(args.inputs))
    inputs = {job.source.resolve() for job in jobs}
    if args.workers < 0:
        raise VitAdapterError(f"--workers must be 0 or more, got {args.workers}")
    shard = Shard()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: a share of the photos each
        from ..evaluation.distributed import shard_from_environment

        shard, args.device = shard_from_environment(args.device)
    try:
        jobs = jobs[shard.rank::shard.world_size]  # before the skip: ranks agree on shares
        if args.skip_existing:
            todo = [j for j in jobs if not all(p.is_file() for p in j.outputs(out))]
            if len(todo) < len(jobs):
                logger.info("skipping %d image(s) already done", len(jobs) - len(todo))
            jobs = todo
        failures: list[tuple[Path, str]] = []
        done = 0
        if jobs:
            segmenter = segmenter_from_args(args)
            with Progress(len(jobs), "segment", enabled=shard.is_main) as bar:
                for job, error in segment_jobs(segmenter, jobs, out, inputs, args):
                    if error is None:
                        done += 1
                    else:
                        failures.append((job.source, str(error)))
                        print(f"error: {job.source}: {error}", file=sys.stderr)
                    bar.advance(note=job.source.name)
        done, failed = (int(v) for v in shard.sum(np.array([done, len(failures)])))
    finally:
        shard.close()
    if shard.is_main:
        print(f"segmented {done} image(s) into {out}" + (f"; {failed} failed:" if failed
                                                          else ""), file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def segment_jobs(segmenter: Segmenter, jobs: list[Job], out: Path, inputs: set[Path],
                 args: argparse.Namespace) -> Iterator[tuple[Job, Exception | None]]:
    """Each job with the error that stopped it, or None once its outputs are written: photos
    prepared ahead (``--workers``), windows batched across photos (``--batch-windows``), the
    files written by a background thread."""
    runnable: list[tuple[Job, Path | None]] = []
    clashing: list[tuple[Job, Path | None]] = []
    for job in jobs:
        clash = [p for p in job.outputs(out) if p.resolve() in inputs]
        (clashing if clash else runnable).append((job, clash[0] if clash else None))
    for job, path in clashing:
        yield job, VitAdapterError(f"would overwrite the input {path}; choose another --out")
    runnable_jobs = [job for job, _ in runnable]
    writing: deque[tuple[Job, Future[None] | Exception]] = deque()
    with ThreadPoolExecutor(max_workers=1) as writer:
        stream = segment_stream(segmenter, [j.source for j in runnable_jobs],
                                workers=args.workers)
        for index, result in stream:
            job = runnable_jobs[index]
            writing.append((job, result if isinstance(result, Exception) else writer.submit(
                write_outputs, result, job, out, args, segmenter)))
            while len(writing) > WRITE_AHEAD or (writing and _ready(writing[0][1])):
                yield _written(*writing.popleft())
        while writing:
            yield _written(*writing.popleft())


WRITE_AHEAD = 4  # results held in memory while the writer catches up


def _ready(pending: Future[None] | Exception) -> bool:
    return isinstance(pending, Exception) or pending.done()


def _written(job: Job, pending: Future[None] | Exception) -> tuple[Job, Exception | None]:
    if isinstance(pending, Exception):
        return job, pending
    try:
        pending.result()
    except (ImageError, VitAdapterError, OSError) as exc:
        return job, exc
    return job, None


def collect_jobs(inputs: list[str]) -> tuple[list[Job], list[Path]]:
    """Expand files, directories (recursively) and globs into jobs with unique output stems;
    directory contents keep their relative layout under --out."""
    jobs: list[Job] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in file.relative_to(path).parts):
                    continue
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    jobs.append(Job(file, file.relative_to(path).with_suffix("")))
                else:
                    skipped.append(file)
        elif path.is_file():
            jobs.append(Job(path, Path(path.stem)))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise VitAdapterError(f"no such file, directory or pattern: {item}")
            jobs.extend(Job(m, Path(m.stem)) for m in files)
    return _unique(jobs), skipped


def _unique(jobs: list[Job]) -> list[Job]:
    seen_sources: set[Path] = set()
    seen_stems: set[Path] = set()
    unique = []
    for job in jobs:
        if job.source.resolve() in seen_sources:
            continue
        seen_sources.add(job.source.resolve())
        stem, n = job.stem, 2
        while stem in seen_stems:
            stem = job.stem.with_name(f"{job.stem.name}-{n}")
            n += 1
        seen_stems.add(stem)
        unique.append(Job(job.source, stem))
    return unique


def write_outputs(result: SegmentationResult, job: Job, out: Path, args: argparse.Namespace,
                  segmenter: Segmenter) -> None:
    labels_path, color_path, overlay_path, json_path = job.outputs(out)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    result.label_image().save(labels_path)
    Image.fromarray(result.colorize()).save(color_path)
    Image.fromarray(result.overlay(args.alpha, legend=not args.no_legend)).save(overlay_path)
    height, width = result.label_map.shape
    report = {
        "image": str(job.source), "width": width, "height": height,
        "model": result.model, "behaviour": segmenter.config.behaviour, "tta": segmenter.tta,
        "device": segmenter.device, "seconds": round(result.seconds, 3),
        "outputs": {"labels": labels_path.name, "color": color_path.name,
                    "overlay": overlay_path.name},
        "classes": [{**row, "share": round(row["share"], 6), "score": round(row["score"], 6)}
                    for row in result.summary()],
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")

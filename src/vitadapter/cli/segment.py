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

from ..distributed import Shard
from ..errors import ImageError, VitAdapterError
from ..files import atomic_path, remove_stale_temps, write_text_atomic
from ..pipeline.images import check_pixels
from ..pipeline.result import SegmentationResult
from ..progress import Progress
from ..segmenter import Segmenter
from ..stream import photo_error, segment_stream
from . import segment_outputs as outputs
from .common import (
    add_model_arguments,
    add_onnx_argument,
    prediction_settings,
    segmenter_from_args,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                  ".pgm", ".jp2"}
OUTPUTS = outputs.OUTPUTS
MAX_PIXELS = 100_000_000


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
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse photos of more pixels (default {MAX_PIXELS}; read from the "
                        "header, before decoding)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip images whose outputs were completely written by an earlier "
                        "run (resume a folder)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes decoding and preprocessing photos ahead of the model "
                        "(default 0: one background thread)")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Job:
    source: Path
    stem: Path  # output path without suffix, relative to --out

    def outputs(self, out: Path) -> list[Path]:
        return outputs.output_paths(out, self.stem)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise VitAdapterError(f"--out {out} is a file; give a directory")
    if not 0.0 <= args.alpha <= 1.0:
        raise VitAdapterError(f"--alpha must lie in [0, 1], got {args.alpha}")
    jobs, skipped = collect_jobs(args.inputs)
    jobs, ours = _leave_out_outputs(jobs, out)
    for path in skipped:
        logger.info("skipping %s: not an image file (by its extension)", path)
    for path in ours:
        logger.info("skipping %s: an output of vitadapter segment in --out", path)
    if not jobs:
        raise VitAdapterError("no images found in " + " ".join(args.inputs))
    if args.workers < 0:
        raise VitAdapterError(f"--workers must be 0 or more, got {args.workers}")
    jobs, new_names = assign_stems(jobs, out)
    shard = Shard()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: a share of the photos each
        from ..distributed import shard_from_environment

        shard, args.device = shard_from_environment(args.device)
    try:
        jobs = jobs[shard.rank::shard.world_size]  # before the skip: ranks agree on shares
        if args.skip_existing:
            todo = [j for j in jobs if not outputs.is_done(out, j.stem, j.source)]
            if len(todo) < len(jobs):
                logger.info("skipping %d image(s) already done", len(jobs) - len(todo))
            jobs = todo
        failures: list[tuple[Path, str]] = []
        done = 0
        if jobs:
            segmenter = segmenter_from_args(args)
            if shard.is_main:  # once the model is there: no --out otherwise
                outputs.append_manifest(out, new_names)
            with Progress(len(jobs), "segment",
                          enabled=shard.is_main and not args.quiet) as bar:
                for job, error in segment_jobs(segmenter, jobs, out, args, bar):
                    if error is None:
                        done += 1
                    else:
                        reason = str(error).removeprefix(f"{job.source}: ")  # the path once
                        failures.append((job.source, reason))
                        _say(f"error: {job.source}: {reason}")
                    bar.advance(note=job.source.name)
        done, failed = (int(v) for v in shard.sum(np.array([done, len(failures)])))
    finally:
        shard.close()
    if shard.is_main:
        _say(f"segmented {done} image(s) into {out}"
             + (f"; {failed} failed:" if failed else ""))
    for path, reason in failures:
        _say(f"  {path}: {reason}")
    return 1 if failures else 0


def segment_jobs(segmenter: Segmenter, jobs: list[Job], out: Path, args: argparse.Namespace,
                 bar: Progress) -> Iterator[tuple[Job, Exception | None]]:
    """Each job with the error that stopped it, or None once its outputs are written: photos
    prepared ahead (``--workers``), windows batched across photos (``--batch-windows``), the
    windows of each photo noted on ``bar``, the files written by a background thread."""
    sources: list[Path | Exception] = []
    for job in jobs:
        try:
            check_pixels(job.source, args.max_pixels)
            sources.append(job.source)
        except ImageError as exc:  # refused before anything decodes it
            sources.append(exc)
    runnable = [i for i, source in enumerate(sources) if isinstance(source, Path)]

    def note(index: int, done: int, total: int) -> None:
        bar.note(f"{jobs[runnable[index]].source.name}: {done}/{total} window(s) done")

    writing: deque[tuple[Job, Future[None] | Exception]] = deque()
    refused = iter(i for i, source in enumerate(sources) if not isinstance(source, Path))
    with ThreadPoolExecutor(max_workers=1) as writer:
        stream = segment_stream(segmenter, [jobs[i].source for i in runnable],
                                workers=args.workers, on_windows=note)
        for index, result in stream:
            job = jobs[runnable[index]]
            writing.append((job, result if isinstance(result, Exception) else writer.submit(
                write_outputs, result, job, out, args, segmenter)))
            while len(writing) > WRITE_AHEAD or (writing and _ready(writing[0][1])):
                yield _written(*writing.popleft())
        while writing:
            yield _written(*writing.popleft())
    for i in refused:
        error = sources[i]
        assert isinstance(error, Exception)
        yield jobs[i], error


def _say(line: str) -> None:
    """One line to stderr in one write: lines of several ranks never interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


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
    except MemoryError as exc:  # rendering one huge photo's outputs
        return job, photo_error(exc, job.source)
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
    seen: set[Path] = set()
    unique = []
    for job in jobs:
        if job.source.resolve() not in seen:
            seen.add(job.source.resolve())
            unique.append(job)
    return unique


def _leave_out_outputs(jobs: list[Job], out: Path) -> tuple[list[Job], list[Path]]:
    """Drop the files under ``out`` that an earlier run wrote there, and everything under
    ``out`` when it lies inside an input folder: outputs are never taken for photos."""
    out_dir = out.resolve()
    ours = outputs.written_by_us(out, outputs.read_manifest(out))
    keep: list[Job] = []
    dropped: list[Job] = []
    for job in jobs:
        source = job.source.resolve()
        nested = out_dir in source.parents and _from_folder_above(job, out_dir)
        (dropped if source in ours or nested else keep).append(job)
    return keep, [job.source for job in dropped]


def _from_folder_above(job: Job, out_dir: Path) -> bool:
    """Whether ``job`` was found by walking a folder that contains ``out_dir`` strictly."""
    root = job.source.resolve()
    for _ in job.stem.parts:
        root = root.parent
    return root != out_dir and root in out_dir.parents


def assign_stems(jobs: list[Job], out: Path) -> tuple[list[Job], dict[str, Path]]:
    """Give each input the output stem recorded for it by an earlier run, and new inputs a
    stem no other input has (``name-2``, ``name-3``, ...) and whose outputs are no input;
    also the new ones, to record."""
    recorded = outputs.read_manifest(out)
    taken = set(recorded.values())
    inputs = {job.source.resolve() for job in jobs}
    new: dict[str, Path] = {}
    assigned = []
    for job in jobs:
        source = str(job.source.resolve())
        stem = recorded.get(source)
        if stem is None:
            stem, n = job.stem, 2
            while (stem in taken
                   or any(p.resolve() in inputs for p in outputs.output_paths(out, stem))
                   or outputs.recorded_source(out / f"{stem}.json") not in (None, source)):
                stem = job.stem.with_name(f"{job.stem.name}-{n}")
                n += 1
            new[source] = stem
            taken.add(stem)
        assigned.append(Job(job.source, stem))
    return assigned, new


def write_outputs(result: SegmentationResult, job: Job, out: Path, args: argparse.Namespace,
                  segmenter: Segmenter) -> None:
    """Write the three PNGs, each under a temporary name renamed when complete, then the JSON,
    the proof that the image is done (removed first, so a crash leaves no stale proof)."""
    labels_path, color_path, overlay_path, json_path = job.outputs(out)
    json_path.unlink(missing_ok=True)
    for path in job.outputs(out):
        remove_stale_temps(path)
    images = {labels_path: result.label_image(), color_path: Image.fromarray(result.colorize()),
              overlay_path: Image.fromarray(result.overlay(args.alpha,
                                                           legend=not args.no_legend))}
    for path, image in images.items():
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
    height, width = result.label_map.shape
    report = {
        "image": str(job.source), "source": str(job.source.resolve()),
        "width": width, "height": height,
        "model": result.model, "behaviour": segmenter.config.behaviour, "tta": segmenter.tta,
        "device": segmenter.device, **prediction_settings(args, segmenter),
        "seconds": round(result.seconds, 3),
        "outputs": {"labels": labels_path.name, "color": color_path.name,
                    "overlay": overlay_path.name},
        "output_bytes": {"labels": labels_path.stat().st_size,
                         "color": color_path.stat().st_size,
                         "overlay": overlay_path.stat().st_size},
        "classes": [{**row, "share": round(row["share"], 6),
                     "score": None if row["score"] is None else round(row["score"], 6)}
                    for row in result.summary()],
    }
    write_text_atomic(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")

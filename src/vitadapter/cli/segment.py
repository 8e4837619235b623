"""``vitadapter segment INPUT... --out DIR``: label, colour and overlay PNGs plus a JSON."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import ImageError, VitAdapterError
from ..pipeline.result import SegmentationResult
from ..progress import Progress
from ..segmenter import Segmenter
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
    if args.skip_existing:
        todo = [j for j in jobs if not all(p.is_file() for p in j.outputs(out))]
        if len(todo) < len(jobs):
            logger.info("skipping %d image(s) already done", len(jobs) - len(todo))
        jobs = todo

    failures: list[tuple[Path, str]] = []
    done = 0
    if jobs:
        segmenter = segmenter_from_args(args)
        with Progress(len(jobs), "segment") as bar:
            for job in jobs:
                try:
                    clash = [p for p in job.outputs(out) if p.resolve() in inputs]
                    if clash:
                        raise VitAdapterError(f"would overwrite the input {clash[0]}; choose "
                                              "another --out")
                    result = segmenter.segment(job.source)
                    write_outputs(result, job, out, args, segmenter)
                    done += 1
                except (ImageError, VitAdapterError, OSError) as exc:
                    failures.append((job.source, str(exc)))
                    print(f"error: {job.source}: {exc}", file=sys.stderr)
                bar.advance(note=job.source.name)
    print(f"segmented {done} image(s) into {out}" + (f"; {len(failures)} failed:" if failures
                                                      else ""), file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


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

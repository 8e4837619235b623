"""The resumable state of an evaluation: per-image areas appended to JSON-lines files.

Each process appends to its own ``<out>/partial/rank-<r>.jsonl``: a first line with the run's
settings, then one line per finished image (its name and its non-zero areas). A line is one
``write`` followed by ``fsync``; a line torn by a crash is dropped when the files are read (so
that image is simply evaluated again). Keeping images rather than running sums makes resuming
exact and independent of how many processes ran before or run now, and lets a resumed run
with another ``--limit`` count exactly the images it selects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EvaluationError
from .metrics import Areas

PARTIAL_DIR = "partial"
FORMAT = "vitadapter-evaluation-records/1"


def record_files(out: Path) -> list[Path]:
    return sorted((out / PARTIAL_DIR).glob("rank-*.jsonl"))


class RecordLog:
    """Appends finished images to ``path``, written by this process only."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(path)
        self.file = path.open("a", encoding="utf-8")
        if self.file.tell() == 0:
            self._write({"format": FORMAT, "settings": settings})

    def append(self, name: str, areas: Areas) -> None:
        classes = np.flatnonzero(areas.union)
        self._write({"image": name, "classes": classes.tolist(),
                     "intersect": areas.intersect[classes].tolist(),
                     "pred": areas.pred[classes].tolist(),
                     "label": areas.label[classes].tolist()})

    def close(self) -> None:
        self.file.close()

    def _write(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())


def load_records(out: Path, settings: dict[str, Any], num_classes: int) -> dict[str, Areas]:
    """The images recorded under ``out`` by earlier runs with the same ``settings``."""
    records: dict[str, Areas] = {}
    for path in record_files(out):
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines[-1]:  # torn last line: that image was not finished
            lines.pop()
        entries = [_parse(line, path, n) for n, line in enumerate(lines, 1) if line]
        if not entries:
            continue
        header = entries[0]
        if header.get("format") != FORMAT:
            raise EvaluationError(f"{path} is not a vitadapter evaluation record file")
        _check_settings(path, header.get("settings", {}), settings)
        for entry in entries[1:]:
            name, areas = entry["image"], _areas(entry, num_classes)
            if name in records and not np.array_equal(records[name].to_array(),
                                                      areas.to_array()):
                raise EvaluationError(f"{out / PARTIAL_DIR} holds two different results for "
                                      f"image {name}; remove the folder and start again")
            records[name] = areas
    return records


def _parse(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise EvaluationError(f"{path}, line {number}: not a valid record; the file is "
                              "damaged (remove it to evaluate its images again)") from None


def _areas(entry: dict[str, Any], num_classes: int) -> Areas:
    array: np.ndarray = np.zeros((3, num_classes), np.int64)
    classes = np.asarray(entry["classes"], np.int64)
    for row, key in enumerate(("intersect", "pred", "label")):
        array[row, classes] = entry[key]
    return Areas.from_array(array)


def _check_settings(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    keys = sorted(set(saved) | set(current))
    differ = [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
              for k in keys if saved.get(k) != current.get(k)]
    if differ:
        raise EvaluationError(
            f"cannot resume: {path.parent} holds an evaluation with other settings ("
            + "; ".join(differ) + "); use another --out, or remove that folder to start over")


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a crash, so new lines start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as file:
            file.truncate(data.rfind(b"\n") + 1)

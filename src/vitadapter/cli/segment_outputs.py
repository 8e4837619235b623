"""The output folder of ``vitadapter segment``: stable output names and proofs of completion.

``<out>/.vitadapter-segment.jsonl`` records, one line per input, which output stem each input
(by its resolved path) was given, so that a re-run gives every input the same names whatever
else was added since. An image is done when its JSON (written last, atomically, like every
output) names it as its source and the three PNGs have the sizes the JSON records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = ".vitadapter-segment.jsonl"
OUTPUTS = ("_labels.png", "_color.png", "_overlay.png", ".json")


def output_paths(out: Path, stem: Path) -> list[Path]:
    return [out / f"{stem}{suffix}" for suffix in OUTPUTS]


def read_manifest(out: Path) -> dict[str, Path]:
    """Resolved input path -> output stem (relative to ``out``) of earlier runs."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    stems: dict[str, Path] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            stems[str(entry["source"])] = Path(entry["stem"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by a crash: that input gets its name again
    return stems


def append_manifest(out: Path, new: dict[str, Path]) -> None:
    if not new:
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / MANIFEST).open("a", encoding="utf-8") as file:
        for source, stem in new.items():
            file.write(json.dumps({"source": source, "stem": stem.as_posix()}) + "\n")
        file.flush()
        os.fsync(file.fileno())


def written_by_us(out: Path, stems: dict[str, Path]) -> set[Path]:
    """The resolved paths of every output recorded in the manifest."""
    return {p.resolve() for stem in stems.values() for p in output_paths(out, stem)}


def recorded_source(json_path: Path) -> str | None:
    report = _read_report(json_path)
    return None if report is None else report.get("source")


def is_done(out: Path, stem: Path, source: Path) -> bool:
    """Whether the outputs of ``source`` under ``stem`` were all written to the end."""
    *images, json_path = output_paths(out, stem)
    report = _read_report(json_path)
    if report is None or report.get("source") != str(source.resolve()):
        return False
    sizes = report.get("output_bytes", {})
    return all(p.is_file() and sizes.get(key) == p.stat().st_size
               for key, p in zip(("labels", "color", "overlay"), images, strict=True))


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None

"""Presenting an evaluation: mmseg-style tables, ``metrics.json`` and ``metrics.csv``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import write_text_atomic
from .metrics import Areas, Metrics, compute_metrics, percent


def class_rows(areas: Areas, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class: IoU and Acc in percent as mmseg prints them (None where NaN), and
    the four summed areas they come from."""
    metrics = compute_metrics(areas)
    return [{"id": c, "name": name, "IoU": percent(float(metrics.iou[c])),
             "Acc": percent(float(metrics.acc[c])), "intersect": int(areas.intersect[c]),
             "union": int(areas.union[c]), "pred_area": int(areas.pred[c]),
             "label_area": int(areas.label[c])}
            for c, name in enumerate(class_names)]


def summary(metrics: Metrics) -> dict[str, float | None]:
    """aAcc, mIoU, mAcc in percent, rounded as mmseg prints them."""
    return {"aAcc": percent(metrics.all_acc), "mIoU": percent(metrics.miou),
            "mAcc": percent(metrics.macc)}


def format_tables(areas: Areas, class_names: Sequence[str]) -> str:
    """The per-class table and the summary, laid out as mmseg's evaluation log."""
    rows = class_rows(areas, class_names)
    per_class = [[r["name"], _cell(r["IoU"]), _cell(r["Acc"])] for r in rows]
    total = summary(compute_metrics(areas))
    return ("per class results:\n" + _table(["Class", "IoU", "Acc"], per_class)
            + "\nSummary:\n" + _table(list(total), [[_cell(v) for v in total.values()]]))


def write_reports(out: Path, areas: Areas, class_names: Sequence[str],
                  info: dict[str, Any]) -> None:
    """``out/metrics.json`` (summary, ``info``, per-class rows, unrounded means) and
    ``out/metrics.csv`` (per-class rows), each replaced atomically."""
    metrics = compute_metrics(areas)
    rows = class_rows(areas, class_names)
    report = {
        **summary(metrics),
        "unrounded": {"aAcc": _unrounded(metrics.all_acc), "mIoU": _unrounded(metrics.miou),
                      "mAcc": _unrounded(metrics.macc)},
        **info,
        "per_class": rows,
    }
    write_text_atomic(out / "metrics.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    write_text_atomic(out / "metrics.csv", text.getvalue())


def _unrounded(value: float) -> float | None:
    return None if math.isnan(value) else value * 100


def _cell(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in column) + 2 for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "|" + "|".join(c.center(w) for c, w in zip(cells, widths, strict=True)) + "|"

    rule = "+" + "+".join("-" * w for w in widths) + "+"
    return "\n".join([rule, line(headers), rule, *map(line, rows), rule]) + "\n"


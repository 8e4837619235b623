"""``vitadapter presets``: list the named models as a table."""

from __future__ import annotations

import argparse
import re

from ..config.presets import PRESETS
from ..config.schema import ModelConfig

_MIOU = re.compile(r"(\d+(?:\.\d+)?) mIoU")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named model presets",
                       description="List the named model presets: dataset, head, parameters, "
                                   "test crop and the official single-scale mIoU.")
    p.add_argument("--long", action="store_true",
                   help="also print each preset's description and release weights URL")
    p.set_defaults(run=run)


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the whole model, counted on a weightless meta-device build (like the
    official #Param, this includes the training-only auxiliary head of UperNet models)."""
    from ..modeling.build import build_model

    return sum(p.numel() for p in build_model(cfg, device="meta").parameters())


def reported_miou(cfg: ModelConfig) -> str:
    match = _MIOU.search(cfg.description)
    return match.group(1) if match else "-"


def rows() -> list[tuple[str, ...]]:
    return [(name, cfg.dataset, cfg.head.kind, f"{parameter_count(cfg) / 1e6:.0f}M",
             str(cfg.inference.crop_size[0]), reported_miou(cfg))
            for name, cfg in PRESETS.items()]


def run(args: argparse.Namespace) -> int:
    table = [("name", "dataset", "head", "params", "crop", "mIoU"), *rows()]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if args.long and row is not table[0]:
            cfg = PRESETS[row[0]]
            print(f"    {cfg.description}\n    weights: {cfg.weights_url}")
            if cfg.backbone_weights_url:
                print(f"    backbone weights: {cfg.backbone_weights_url}")
            if cfg.weights_access:
                print(f"    (gated: request access at {cfg.weights_access})")
    return 0

"""``vitadapter presets``: list the named models."""

from __future__ import annotations

import argparse

from ..config.presets import PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named model presets",
                       description="List the named model presets and their release weights.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name, cfg in PRESETS.items():
        print(f"{name}\n    {cfg.description}\n    weights: {cfg.weights_url}")
    return 0

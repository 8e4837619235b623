"""``curves.png``: training loss and validation mIoU over iterations, from ``log.jsonl``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def plot_curves(log: Path, out: Path) -> Path | None:
    """Draw the curves of ``log`` into ``out``; None (with a notice) without matplotlib or
    without records."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("curves.png skipped: install matplotlib (pip install 'vitadapter[plot]')")
        return None
    if not log.exists():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    val = [r for r in records if r.get("mode") == "val"]
    if not train:
        return None
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.5),
                             squeeze=False)
    axes[0][0].plot([r["iter"] for r in train], [r["loss"] for r in train])
    axes[0][0].set(xlabel="iteration", ylabel="loss", title="training loss")
    if val:
        axes[0][1].plot([r["iter"] for r in val], [100 * r["mIoU"] for r in val], marker="o")
        axes[0][1].set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out

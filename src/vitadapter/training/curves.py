"""``curves.png``: training loss and validation mIoU (percent) over iterations, from the records
of ``log.jsonl``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_path

logger = logging.getLogger(__name__)


def plot_curves(records: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Draw the records into ``out``; None (with a notice) without matplotlib or without
    training records."""
    train = [r for r in records if _number(r.get("loss"))]
    val = [r for r in records if r.get("mode") == "val" and _number(r.get("mIoU"))]
    if not train:
        return None
    # matplotlib's own notices (e.g. "generated new fontManager" on first use) are not ours.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _no_matplotlib()
        return None
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.5),
                             squeeze=False)
    axes[0][0].plot([r["iter"] for r in train], [r["loss"] for r in train])
    axes[0][0].set(xlabel="iteration", ylabel="loss", title="training loss")
    if val:
        axes[0][1].plot([r["iter"] for r in val], [r["mIoU"] for r in val], marker="o")
        axes[0][1].set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


@functools.cache
def _no_matplotlib() -> None:
    logger.info("curves.png skipped: install matplotlib (pip install 'vitadapter[plot]')")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

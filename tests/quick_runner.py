"""A stand-in backend for tests of file handling: class scores from the crops' pixel values,
instantly, without torch. The tiny reference config gives its crop size and classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitadapter.backends.base import ModelInfo
from vitadapter.config.parse import load_config_file
from vitadapter.segmenter import Segmenter

TINY_CONFIG = Path(__file__).parent / "data" / "reference" / "tiny-upstream" / "config.json"


class QuickRunner:
    device = "cpu"

    def __init__(self) -> None:
        self.info = ModelInfo.of(load_config_file(TINY_CONFIG))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        n, _, size, _ = crops.shape
        pooled = crops.reshape(n, 3, size // 4, 4, size // 4, 4).mean(axis=(3, 5))
        scores = np.zeros((n, self.info.config.num_classes, size // 4, size // 4), np.float32)
        scores[:, :3] = pooled
        return scores


def quick_segmenter(*_: object) -> Segmenter:
    return Segmenter(QuickRunner())


def patch_cli(monkeypatch: Any = None) -> None:
    """Make ``vitadapter segment`` run the quick backend (in this process; undone after the
    test with pytest's ``monkeypatch``)."""
    import vitadapter.cli.segment

    if monkeypatch is not None:
        monkeypatch.setattr(vitadapter.cli.segment, "segmenter_from_args", quick_segmenter)
    else:
        vitadapter.cli.segment.segmenter_from_args = quick_segmenter  # type: ignore[assignment]

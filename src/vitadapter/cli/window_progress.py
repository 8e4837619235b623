"""Progress inside one photo: a large photo is many slide windows (minutes on a CPU), so the
bar notes each window as it is done instead of staying silent until the photo ends."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends.base import CropRunner
from ..progress import Progress
from ..segmenter import Segmenter


class _CountingRunner:
    """``runner``, reporting the number of windows of each batch it runs."""

    def __init__(self, runner: CropRunner, notes: WindowNotes) -> None:
        self.runner, self.notes = runner, notes
        self.device, self.info = runner.device, runner.info

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        scores = self.runner(crops)
        self.notes.done(len(crops))
        return scores

    def __getattr__(self, name: str) -> Any:  # e.g. the torch runner's precision
        return getattr(self.runner, name)


class WindowNotes:
    """Counts the windows of the current photo and shows them beside ``bar``."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.name, self.windows = bar, "", 0

    def start(self, name: str) -> None:
        self.name, self.windows = name, 0

    def done(self, windows: int) -> None:
        self.windows += windows
        self.bar.note(f"{self.name}: {self.windows} window(s) done")


def with_window_notes(segmenter: Segmenter, bar: Progress) -> tuple[Segmenter, WindowNotes]:
    """The same segmenter, with its windows noted on ``bar``."""
    notes = WindowNotes(bar)
    runner = _CountingRunner(segmenter.runner, notes)
    return Segmenter(runner, tta=segmenter.tta, batch_windows=segmenter.batch_windows), notes

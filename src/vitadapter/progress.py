"""A small progress bar with ETA for the command line (stderr; quiet when not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "segment") as bar: ... bar.advance(note)``.

    On a terminal the bar is redrawn in place; otherwise a line is printed at most every
    ``interval`` seconds, so logs stay readable.
    """

    def __init__(self, total: int | None, label: str, *, stream: TextIO | None = None,
                 unit: str = "", interval: float = 10.0, enabled: bool = True) -> None:
        self.total, self.label, self.unit, self.enabled = total, label, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.done = 0
        self.note = ""
        self.start = time.monotonic()
        self._last = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(final=True)

    def advance(self, amount: int = 1, note: str = "") -> None:
        self.done += amount
        self.note = note
        self._draw()

    def _draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled:
            return
        if not final and not self.tty and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self.start
        text = f"{self.label}: {_amount(self.done, self.unit)}"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            bar = "#" * int(24 * fraction)
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            text = (f"{self.label} [{bar:<24}] {_amount(self.done, self.unit)}/"
                    f"{_amount(self.total, self.unit)} {_clock(elapsed)} elapsed, "
                    f"ETA {_clock(eta)}")
        if self.note:
            text += f"  {self.note}"
        if self.tty:
            end = "\n" if final else ""
            self.stream.write(f"\r\033[K{text}{end}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _amount(value: int, unit: str) -> str:
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return str(value)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"

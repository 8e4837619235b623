"""Progress bars for the command line (tqdm on stderr): redrawn in place on a terminal, at
most every ``interval`` seconds otherwise so that logs stay readable; off with ``-q``."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    """``with Progress(total, "segment") as bar: ... bar.advance(note=...)``; ``bar.note(text)``
    shows what the current item is doing (e.g. its slide windows) without advancing."""

    def __init__(self, total: int | None, label: str, *, stream: TextIO | None = None,
                 unit: str = "", interval: float = 10.0, enabled: bool = True) -> None:
        stream = stream or sys.stderr
        tty = stream.isatty()
        self.bar = tqdm(total=total, desc=label, file=stream, disable=not enabled,
                        unit="B" if unit == "B" else "it", unit_scale=unit == "B",
                        unit_divisor=1024, mininterval=0.2 if tty else interval,
                        maxinterval=max(interval, 10.0), dynamic_ncols=tty, ascii=not tty)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def advance(self, amount: int = 1, note: str = "") -> None:
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(amount)

    def note(self, text: str) -> None:
        """Show ``text`` beside the bar (redrawn at the bar's own pace)."""
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(0)

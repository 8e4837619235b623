"""Small tools shared by tests: hostile images, and a real process killed mid-write."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, a few hundred bytes long: what
    a decompression bomb shows before it is inflated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def kill_when_torn(script: str, *argv: str) -> int:
    """Run ``script`` (``python -c``, with the repository root and ``argv`` as arguments)
    until it prints ``TORN`` (it has half-written a file and sleeps), then SIGKILL it; its
    return code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(ROOT),
                                *argv], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "TORN"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    return process.returncode


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result (or exception), failing the test instead of hanging when it has not
    returned after ``seconds`` (the call is left running in a daemon thread)."""
    result: list[T] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s: it hangs")
    if raised:
        raise raised[0]
    return result[0]

"""Bilinear resampling (``align_corners=False``) that can produce any band of rows on its own.

The arithmetic follows PyTorch's CPU ``F.interpolate(mode="bilinear")``: source coordinates
``(dst + 0.5) * in / out - 0.5`` clamped at 0, a horizontal then a vertical two-tap pass, each
tap pair combined as ``fma(a, wa, b * wb)``. Every output value depends only on its own row, so
computing a large image band by band gives exactly the same numbers as computing it whole, while
holding only one band in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class LinearTaps:
    """For each output position: the two source indices and their weights."""

    index0: np.ndarray
    index1: np.ndarray
    weight0: np.ndarray
    weight1: np.ndarray

    def rows(self, start: int, stop: int) -> LinearTaps:
        return LinearTaps(self.index0[start:stop], self.index1[start:stop],
                          self.weight0[start:stop], self.weight1[start:stop])

    @property
    def span(self) -> tuple[int, int]:
        """The half-open range of source positions these taps read."""
        return int(self.index0.min()), int(self.index1.max()) + 1


@lru_cache(maxsize=64)
def linear_taps(size_in: int, size_out: int) -> LinearTaps:
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    src = (scale * (np.arange(size_out) + 0.5) - 0.5).astype(np.float32)  # one rounding
    src = np.maximum(src, np.float32(0))
    index0 = src.astype(np.int64)
    weight1 = src - index0.astype(np.float32)
    index1 = np.minimum(index0 + 1, size_in - 1)
    return LinearTaps(index0, index1, np.float32(1) - weight1, weight1)


def lerp(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """``a * wa + b * wb`` rounded like a fused multiply-add of the first product: the float64
    sum of the exact ``a * wa`` and the float32 ``b * wb``, rounded to float32 (in three passes,
    with no separate cast)."""
    exact = np.multiply(a, wa, dtype=np.float64)
    out = np.empty(exact.shape, np.float32)
    return np.add(exact, b * wb, out=out, dtype=np.float64, casting="same_kind")


def resize_width(x: np.ndarray, width: int) -> np.ndarray:
    """Resample the last axis of ``x`` (..., W) to ``width``."""
    taps = linear_taps(x.shape[-1], width)
    return lerp(x[..., taps.index0], taps.weight0, x[..., taps.index1], taps.weight1)


def resize_rows(x: np.ndarray, taps: LinearTaps, offset: int = 0) -> np.ndarray:
    """Vertical pass of (C, rows, W) ``x`` whose first row is source row ``offset``."""
    w0, w1 = taps.weight0[:, None], taps.weight1[:, None]
    return lerp(x[:, taps.index0 - offset], w0, x[:, taps.index1 - offset], w1)

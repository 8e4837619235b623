"""The bilinear resampling of :mod:`vitadapter.pipeline.resample` on torch tensors, bit for bit.

The taps (source indices and weights) are the numpy module's own, moved to the device; every
tap pair is combined in float64 (``a * wa`` is exact there, so a fused or an unfused
multiply-add gives the same double) and rounded to float32, exactly as the numpy ``_lerp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..pipeline.resample import LinearTaps, linear_taps


@dataclass(frozen=True)
class Taps:
    """:class:`~vitadapter.pipeline.resample.LinearTaps` on a device (with the host copy)."""

    host: LinearTaps
    index0: torch.Tensor  # int64
    index1: torch.Tensor
    weight0: torch.Tensor  # float32
    weight1: torch.Tensor

    def rows(self, start: int, stop: int) -> Taps:
        return Taps(self.host.rows(start, stop), self.index0[start:stop],
                    self.index1[start:stop], self.weight0[start:stop],
                    self.weight1[start:stop])

    @property
    def span(self) -> tuple[int, int]:
        return self.host.span


@lru_cache(maxsize=64)
def device_taps(size_in: int, size_out: int, device: torch.device) -> Taps:
    host = linear_taps(size_in, size_out)
    return Taps(host, *(torch.from_numpy(a).to(device) for a in (
        host.index0, host.index1, host.weight0, host.weight1)))


def lerp(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """``a * wa + b * wb`` as the numpy path rounds it: float64 sum of the exact first product
    and the float32 second product, rounded to float32."""
    return torch.addcmul((b * wb).double(), a.double(), wa.double()).float()


def resize_width(x: torch.Tensor, width: int) -> torch.Tensor:
    """Resample the last axis of ``x`` (..., W) to ``width``."""
    taps = device_taps(x.shape[-1], width, x.device)
    return lerp(x.index_select(-1, taps.index0), taps.weight0,
                x.index_select(-1, taps.index1), taps.weight1)


def resize_rows(x: torch.Tensor, taps: Taps, offset: int = 0) -> torch.Tensor:
    """Vertical pass of (C, rows, W) ``x`` whose first row is source row ``offset``."""
    return lerp(x.index_select(1, taps.index0 - offset), taps.weight0[:, None],
                x.index_select(1, taps.index1 - offset), taps.weight1[:, None])

"""Sampling mask logits at continuous points, and the importance sampling of the mask losses.

Every random draw goes through a *point source*: a callable ``draw(shape, device)`` returning
uniform samples in [0, 1) of that shape (float32). :class:`RandomPoints` (the default) calls
``torch.rand``, optionally with a ``torch.Generator``; :class:`ReplayPoints` hands back recorded
tensors in call order, so that a test can replay the official draws exactly. The Mask2Former
loss draws, per prediction set and in this order: one (1, P, 2) tensor per image for the
matcher, then the (G, P * oversample, 2) candidates and the (G, P - k, 2) random points of
:func:`uncertain_points` (G = matched masks of the batch). That is the official ``torch.rand``
call order, so the reference's ``rand_call_order`` replays one to one.

:class:`SamplePoints` instead gives every image of the batch its own source, seeded by its
sample's (seed, epoch, index); the loss then draws per image (the matcher's points, then that
image's candidates and random points). The draws of a sample then depend neither on the batch
it sits in nor on the process that holds it, so W processes with batch B train as one process
with batch W * B.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class PointSource(Protocol):
    """Anything that returns uniform [0, 1) samples of a given shape on a given device."""

    def __call__(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor: ...


@dataclass
class RandomPoints:
    """``torch.rand`` draws (from ``generator`` when given, else the global generator)."""

    generator: torch.Generator | None = None

    def __call__(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.generator is None:
            return torch.rand(shape, device=device)
        draw = torch.rand(shape, generator=self.generator, device=self.generator.device)
        return draw.to(device)


_POINT_STREAM = 2  # generator key part of the loss's points (the data uses 0 and 1)


class SamplePoints:
    """One :class:`RandomPoints` per image of the batch, seeded by its sample's key;
    :meth:`start_batch` with the batch's (epoch, index) keys before each loss call."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._sources: list[RandomPoints] = []

    def start_batch(self, keys: Sequence[tuple[int, int]]) -> None:
        self._sources = []
        for epoch, index in keys:
            key = np.random.default_rng([self.seed, _POINT_STREAM, epoch, index])
            generator = torch.Generator().manual_seed(int(key.integers(2**63)))
            self._sources.append(RandomPoints(generator))

    def for_sample(self, image: int) -> PointSource:
        if image >= len(self._sources):
            raise RuntimeError(f"no point source for image {image}: call start_batch with the "
                               "keys of the batch first")
        return self._sources[image]


class ReplayPoints:
    """Recorded draws handed back in order; a draw of another shape, or one too many, raises."""

    def __init__(self, draws: Iterable[torch.Tensor]) -> None:
        self._draws = list(draws)
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self._draws) - self._next

    def __call__(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self._next >= len(self._draws):
            raise RuntimeError(f"no recorded draw left for a draw of shape {shape}")
        draw = self._draws[self._next]
        if tuple(draw.shape) != tuple(shape):
            raise RuntimeError(f"recorded draw {self._next} has shape {tuple(draw.shape)}, "
                               f"the caller asks for {tuple(shape)}")
        self._next += 1
        return draw.to(device)


def point_sample(input: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``input`` (N, C, H, W) at ``points`` (N, P, 2), (x, y) in [0, 1]
    relative to the whole map (pixel corners at 0 and 1, as ``align_corners=False``); zero
    outside. Returns (N, C, P)."""
    grid = (2.0 * points - 1.0).unsqueeze(2)  # (N, P, 1, 2)
    return F.grid_sample(input, grid, align_corners=False).squeeze(3)


def uncertain_points(mask_logits: torch.Tensor, num_points: int, oversample_ratio: float,
                     importance_ratio: float, draw: PointSource | None = None) -> torch.Tensor:
    """Points (G, num_points, 2) for the mask losses of ``mask_logits`` (G, h, w).

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_ratio * num_points)`` most uncertain ones (largest ``-|logit|``, in
    ``torch.topk`` order: descending uncertainty) and appends uniform points up to
    ``num_points``; returned in the dtype of ``mask_logits``. Two draws from ``draw``
    (default :class:`RandomPoints`): the candidates, then the appended points (skipped when
    none are needed). No gradient flows through.
    """
    if oversample_ratio < 1 or not 0 <= importance_ratio <= 1:
        raise ValueError("need oversample_ratio >= 1 and 0 <= importance_ratio <= 1")
    draw = draw if draw is not None else RandomPoints()
    count = mask_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    with torch.no_grad():
        candidates = draw((count, num_candidates, 2), mask_logits.device).to(mask_logits.dtype)
        logits = point_sample(mask_logits.unsqueeze(1), candidates)[:, 0]  # (G, candidates)
        chosen = torch.topk(-logits.abs(), k=num_uncertain, dim=1).indices
        points = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
        if num_points > num_uncertain:
            extra = draw((count, num_points - num_uncertain, 2), mask_logits.device)
            points = torch.cat([points, extra.to(points.dtype)], dim=1)
    return points

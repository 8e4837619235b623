"""Small building blocks shared by the pixel decoder and the transformer decoder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Rows per block of a long FFN input (see FFN.forward).
_FFN_ROWS = 2048


def tensor_cache(maxsize: int) -> Callable[[Callable[..., torch.Tensor]],
                                          functools._lru_cache_wrapper[torch.Tensor]]:
    """``functools.lru_cache`` for functions of hashable arguments returning a constant tensor
    (position grids, reference points), computed outside inference mode: a tensor first made
    during an evaluation (``torch.inference_mode``) stays usable by autograd when training
    follows in the same process (gradient checkpointing saves it for backward)."""
    def decorate(function: Callable[..., torch.Tensor]
                 ) -> functools._lru_cache_wrapper[torch.Tensor]:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(function)
        def cached(*args: Any, **kwargs: Any) -> torch.Tensor:
            with torch.inference_mode(False):
                return function(*args, **kwargs)
        return cached
    return decorate


def maybe_checkpoint(enabled: bool, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``; with ``enabled`` and gradients on, its activations are recomputed
    in backward instead of kept (``torch.utils.checkpoint``, non-reentrant; the RNG state is
    replayed, so drop path draws the same)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


def embedding(num: int, dim: int) -> nn.Embedding:
    """``nn.Embedding`` with N(0, 1) init, skipped on the meta device (``normal_`` there pulls
    in torch's compiler stack for nothing)."""
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return nn.Embedding(num, dim, _weight=weight)


class FFN(nn.Module):
    """Two-layer ReLU MLP with a residual (mmcv ``FFN`` with ``add_identity=True``).

    Parameter names follow mmcv: ``layers.0.0`` is the expansion, ``layers.1`` the projection.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()),
                                    nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] <= _FFN_ROWS or torch.is_grad_enabled():
            return x + self.layers(x)
        # Long sequences (the pixel decoder's 16464 tokens at 896) in blocks of rows: the
        # hidden activations of one block (32 MB) instead of all of them (270 MB).
        return torch.cat([part + self.layers(part) for part in x.split(_FFN_ROWS, dim=-2)],
                         dim=-2)


class ConvGN(nn.Module):
    """Convolution + GroupNorm (+ ReLU): mmcv's ``ConvModule`` as the pixel decoder uses it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int,
                 bias: bool, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2, bias=bias)
        self.gn = nn.GroupNorm(groups, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv(x))
        return torch.relu_(x) if self.relu else x  # in place: GroupNorm's output is our own

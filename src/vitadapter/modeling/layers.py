"""Small building blocks shared by the pixel decoder and the transformer decoder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import fast_inference

# Rows per block of a long FFN input (see FFN.forward).
_FFN_ROWS = 2048


def maybe_checkpoint(enabled: bool, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``; with ``enabled`` and gradients on, its activations are recomputed
    in backward instead of kept (``torch.utils.checkpoint``, non-reentrant; the RNG state is
    replayed, so drop path draws the same)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


Constant = Callable[..., torch.Tensor]


def cached_constant(maxsize: int) -> Callable[[Constant], Constant]:
    """``functools.lru_cache`` for tensors derived from sizes (position indices, reference
    points, encodings), always computed outside inference mode: one cached by an inference
    (segment, an evaluation during training) would fail every later training step that saves
    it for backward."""
    def decorate(function: Constant) -> Constant:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(function)
        def cached(*args: Any, **kwargs: Any) -> torch.Tensor:
            with torch.inference_mode(False):
                return function(*args, **kwargs)
        return cached
    return decorate


def fresh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of a tensor nothing else holds: in place where :func:`fast_inference` (a fresh
    temporary of the size of the MLP activations, 51 MB per BEiT-L block at 896, costs page
    faults)."""
    return torch.ops.aten.gelu_(x) if fast_inference() else F.gelu(x)


def token_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens (B, H*W, C) in row-major order as a contiguous (B, C, H, W) map.

    A transposed view would be cheaper to make, but bilinear resizing, elementwise ops with
    contiguous maps and the large convolutions of the heads run several times slower on it.
    """
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, height, width).contiguous()


def pointwise_conv_to_contiguous(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (with bias) of a map in any layout, as one matrix product whose
    result is a contiguous (B, C, H, W) map (the convolution would keep a channels-last
    input's layout, and converting a large map afterwards costs a transposing copy)."""
    batch, channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    weight = conv.weight.view(conv.out_channels, channels)
    bias = conv.bias.view(1, -1, 1) if conv.bias is not None else x.new_zeros(1, 1, 1)
    out = torch.baddbmm(bias, weight.expand(batch, -1, -1), pixels.transpose(1, 2))
    return out.view(batch, conv.out_channels, height, width)


def transposed_conv2x2_add(conv: nn.ConvTranspose2d, x: torch.Tensor,
                           residual: torch.Tensor) -> torch.Tensor:
    """``conv(x) + residual`` for a 2x2 transposed convolution of stride 2, where every input
    pixel paints its own 2x2 block of the output: one matrix product gives the four output
    planes (C_out x 4 rows), whose interleaving is fused with the residual addition. Twice
    as fast on a CPU as the convolution kernel (2.7 s against 1.3 s at the seed preset's 1/8
    map, one thread). Contiguous (B, C, H, W) maps; other geometries, and outside
    :func:`fast_inference` (the fused addition writes into its output), run ``conv``
    itself."""
    if (conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0)
            or conv.output_padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1
            or conv.bias is None or not fast_inference()):
        return conv(x) + residual
    batch, cin, height, width = x.shape
    cout = conv.out_channels
    # Rows (di, dj, c_out) of the planes: weight (C_in, C_out, di, dj) -> (di, dj, C_out, C_in).
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    planes = torch.baddbmm(conv.bias.repeat(4).view(1, -1, 1), weight.expand(batch, -1, -1),
                           x.reshape(batch, cin, height * width))
    out = torch.empty(batch, cout, 2 * height, 2 * width, dtype=planes.dtype, device=x.device)
    # out[b, c, 2i + di, 2j + dj] = planes[b, (di, dj, c), i, j] + residual[...]
    torch.add(planes.view(batch, 2, 2, cout, height, width).permute(0, 3, 4, 1, 5, 2),
              residual.contiguous().view(batch, cout, height, 2, width, 2),
              out=out.view(batch, cout, height, 2, width, 2))
    return out


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
        if fast_inference():
            return self._in_blocks(x)
        if x.shape[-2] <= _FFN_ROWS or torch.is_grad_enabled():
            return x + self.layers(x)
        # The reference path without autograd (the ONNX export traces it): long sequences
        # in blocks of rows too.
        return torch.cat([part + self.layers(part) for part in x.split(_FFN_ROWS, dim=-2)],
                         dim=-2)

    def _in_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Long sequences (the pixel decoder's 16464 tokens at 896) in blocks of rows: the
        hidden activations of one block (32 MB) instead of all of them (270 MB); the ReLU in
        place and each block's sum written into the output."""
        expand = cast(nn.Sequential, self.layers[0])[0]
        project = self.layers[1]
        out = torch.empty_like(x)
        for part, rows in zip(x.split(_FFN_ROWS, dim=-2), out.split(_FFN_ROWS, dim=-2),
                              strict=True):
            torch.add(part, project(torch.relu_(expand(part))), out=rows)
        return out


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

"""Small building blocks shared by the pixel decoder and the transformer decoder."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import Linear, activated, fast_inference, linear, matmul_nt

# Rows per block of a long FFN input (see FFN.forward).
_FFN_ROWS = 2048
# A transformer block's MLP on a sequence longer than this runs in blocks of rows
# (add_mlp_residual).
_LONG_SEQUENCE, _MLP_ROWS = 2048, 1024


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


def add_residual(x: torch.Tensor, branch: torch.Tensor,
                 gamma: torch.Tensor | None = None) -> torch.Tensor:
    """``x + gamma * branch`` (``x + branch`` without ``gamma``): a residual connection. Where
    :func:`fast_inference`, written into ``branch``, a fresh output nothing else holds (no new
    tensor, whose fresh pages cost as much as the addition), with the same values; the plain
    expression where a dtype promotion is involved (a bf16 branch under autocast)."""
    same = branch.dtype == x.dtype and (gamma is None or gamma.dtype == x.dtype)
    if not (fast_inference() and same and branch.shape == x.shape):
        return x + branch if gamma is None else x + gamma * branch
    if gamma is not None:
        branch.mul_(gamma)
    return branch.add_(x)


def add_mlp_residual(x: torch.Tensor, norm: nn.Module, mlp: nn.Module,
                     gamma: torch.Tensor | None = None) -> torch.Tensor:
    """``x + gamma * mlp(norm(x))``, a transformer block's second residual, on the fast path
    (as :func:`add_residual`). On the CPU a sequence of more than ``_LONG_SEQUENCE`` tokens
    goes ``_MLP_ROWS`` rows at a time, each block's sum written into ``x`` (a tensor nothing
    else holds: the block's first residual), with the same values: oneDNN runs the MLP's
    products on 1024 rows at 370-390 GFLOP/s, on BEiT-L's whole 3137 tokens at 290-320 (a
    2-core AMD EPYC; 1.2x for the branch; no gain at 1029 or 5376 rows)."""
    if x.device.type != "cpu" or x.shape[-2] <= _LONG_SEQUENCE:
        return add_residual(x, mlp(norm(x)), gamma)
    for part in x.split(_MLP_ROWS, dim=-2):
        branch = mlp(norm(part))
        part.add_(branch if gamma is None else branch * gamma)
    return x


# Folded BatchNorms: (key, aliases of the tensors folded, weight, bias), dropped with the module.
_FOLDED: weakref.WeakKeyDictionary[nn.Module, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _fold_key(tensors: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int], ...] | None:
    """What identifies the values of ``tensors``: their storage and in-place version (None for
    inference tensors, which keep no version)."""
    try:
        return tuple((t.data_ptr(), t._version) for t in tensors)
    except RuntimeError:
        return None


def folded_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to ``bn(conv(x))`` with ``bn`` in eval
    mode (its running statistics), computed as PyTorch's own kernel scales: ``alpha = gamma /
    sqrt(var + eps)``, weight ``w * alpha``, bias ``beta + (b - mean) * alpha``.

    Cached per ``bn`` while the parameters and statistics keep their storage and version (an
    in-place change, ``load_state_dict``, ``.to()`` refold); the cache holds aliases of the
    tensors it was made from, so their memory cannot come back as different values at the
    same address."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("folding a BatchNorm needs its running statistics")
    sources = tuple(t for t in (conv.weight, conv.bias, bn.weight, bn.bias,
                                bn.running_mean, bn.running_var) if t is not None)
    key = _fold_key(sources)
    cached = _FOLDED.get(bn)
    if key is not None and cached is not None and cached[0] == key:
        return cached[2], cached[3]
    with torch.no_grad():
        alpha = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            alpha = alpha * bn.weight
        shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
        bias = shift * alpha
        if bn.bias is not None:
            bias = bias + bn.bias
        weight = conv.weight * alpha.view(-1, *([1] * (conv.weight.dim() - 1)))
    if key is not None:
        _FOLDED[bn] = (key, tuple(t.detach() for t in sources), weight, bias)
    return weight, bias


def conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(conv(x)))``; where :func:`fast_inference` and ``bn`` is in eval mode, one
    convolution with the BatchNorm folded in (:func:`folded_conv_bn`: no pass over the
    output for the normalisation; values differ from the two-step form by rounding only)."""
    if bn.training or bn.running_mean is None or not fast_inference():
        return torch.relu_(bn(conv(x)))  # in place: the BatchNorm output is our own
    weight, bias = folded_conv_bn(conv, bn)
    return torch.relu_(conv2d(conv, x, weight, bias))


# Blocks of a transposing copy on the CPU: input rows x columns. PyTorch's strided copy walks
# the output in order and reads the input with a stride of a whole row, missing the cache on
# every element; a block this size fits the cache: 2-4x faster for the token maps here
# (e.g. 4096x768: 10.6 -> 2.0 ms, 16384x1024: 124 -> 40 ms on 2 cores).
_TRANSPOSE_BLOCK = (256, 1024)


def transposed(x: torch.Tensor) -> torch.Tensor:
    """``x.transpose(1, 2).contiguous()`` for a 3-d tensor, copied in cache-sized blocks where
    :func:`fast_inference` on a CPU."""
    rows, cols = x.shape[1:]
    if (x.device.type != "cpu" or not fast_inference() or rows <= _TRANSPOSE_BLOCK[0]
            or x.transpose(1, 2).is_contiguous()):
        return x.transpose(1, 2).contiguous()
    out = x.new_empty(x.shape[0], cols, rows)
    block_rows, block_cols = _TRANSPOSE_BLOCK
    for i in range(0, rows, block_rows):
        for j in range(0, cols, block_cols):
            out[:, j:j + block_cols, i:i + block_rows].copy_(
                x[:, i:i + block_rows, j:j + block_cols].transpose(1, 2))
    return out


def token_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens (B, H*W, C) in row-major order as a contiguous (B, C, H, W) map.

    A transposed view would be cheaper to make, but bilinear resizing, elementwise ops with
    contiguous maps and the large convolutions of the heads run several times slower on it.
    """
    return transposed(tokens).view(tokens.shape[0], -1, height, width)


def token_grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens (B, H*W, C) in row-major order as a (B, C, H, W) channels-last view: no copy.
    Where the map's consumers run on that layout as fast (resizing, elementwise ops with
    other channels-last maps, BatchNorm, pointwise convolutions as matrix products)."""
    return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def pointwise_conv_to_contiguous(x: torch.Tensor, weight: torch.Tensor,
                                 bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution (``weight`` (C_out, C_in, 1, 1), optional ``bias``) of a map in any
    layout, as one matrix product whose result is a contiguous (B, C, H, W) map: the
    convolution would keep a channels-last input's layout (converting a large map afterwards
    costs a transposing copy), and on a CPU the product is 1.4-2.7x faster than the
    convolution kernel on a contiguous map at 1/4 of a 512 crop."""
    batch, channels, height, width = x.shape
    pixels = x.flatten(2).transpose(1, 2)  # (B, HW, C): a view in either layout
    rows = weight.view(weight.shape[0], channels)
    out = matmul_nt(rows.expand(batch, -1, -1), pixels, bias)
    return out.view(batch, weight.shape[0], height, width)


def conv2d(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None = None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(x)``, with ``weight`` and ``bias`` in place of the conv's own when a weight is
    given; where :func:`fast_inference` on a CPU, a pointwise convolution (1x1, stride 1, one
    group) as one matrix product (:func:`pointwise_conv_to_contiguous`)."""
    if weight is None:
        weight, bias = conv.weight, conv.bias
    if (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
            and conv.groups == 1 and x.dim() == 4 and x.device.type == "cpu"
            and fast_inference()):
        return pointwise_conv_to_contiguous(x, weight, bias)
    return conv._conv_forward(x, weight, bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs through :func:`conv2d` (pointwise ones as a matrix product in
    fast CPU inference); same parameters, state dict and hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(self, x)


def transposed_conv2x2_add(conv: nn.ConvTranspose2d, x: torch.Tensor,
                           residual: torch.Tensor) -> torch.Tensor:
    """``conv(x) + residual`` for a 2x2 transposed convolution of stride 2, where every input
    pixel paints its own 2x2 block of the output: one matrix product gives the four output
    planes, whose interleaving is fused with the residual addition. Twice as fast on a CPU as
    the convolution kernel (2.7 s against 1.3 s at the seed preset's 1/8 map, one thread).
    Channels-last ``x`` and ``residual`` (:func:`token_grid`) give a channels-last result, where
    the interleaving moves whole pixels (runs of C floats) instead of single floats: 3-5x
    faster again; other layouts give a contiguous (B, C, H, W) map. Other geometries, and
    outside :func:`fast_inference` (the fused addition writes into its output), run ``conv``
    itself."""
    if (conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0)
            or conv.output_padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1
            or conv.bias is None or not fast_inference()):
        return conv(x) + residual
    batch, cin, height, width = x.shape
    cout = conv.out_channels
    # Planes (di, dj, c_out): weight (C_in, C_out, di, dj) -> (di, dj, C_out, C_in).
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    bias = conv.bias.repeat(4)
    if _is_channels_last(x) and _is_channels_last(residual):
        # (B, H, W, (di, dj, C)) from the pixels as rows; out[b, 2i + di, 2j + dj, c].
        planes = linear(x.permute(0, 2, 3, 1), weight, bias)
        out = torch.empty(batch, cout, 2 * height, 2 * width, dtype=planes.dtype,
                          device=x.device, memory_format=torch.channels_last)
        torch.add(planes.view(batch, height, width, 2, 2, cout).transpose(2, 3),
                  residual.permute(0, 2, 3, 1).view(batch, height, 2, width, 2, cout),
                  out=out.permute(0, 2, 3, 1).view(batch, height, 2, width, 2, cout))
        return out
    planes = matmul_nt(weight.expand(batch, -1, -1), x.flatten(2).transpose(1, 2), bias)
    out = torch.empty(batch, cout, 2 * height, 2 * width, dtype=planes.dtype, device=x.device)
    # out[b, c, 2i + di, 2j + dj] = planes[b, (di, dj, c), i, j] + residual[...]
    torch.add(planes.view(batch, 2, 2, cout, height, width).permute(0, 3, 4, 1, 5, 2),
              residual.contiguous().view(batch, cout, height, 2, width, 2),
              out=out.view(batch, cout, height, 2, width, 2))
    return out


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether each sample of a (B, C, H, W) map is a contiguous (H, W, C) block: a view of
    tokens (the samples may lie apart, as in a slice of a longer sequence)."""
    return x.shape[0] > 0 and x[0].permute(1, 2, 0).is_contiguous()


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
        self.layers = nn.Sequential(nn.Sequential(Linear(dim, hidden), nn.ReLU()),
                                    Linear(hidden, dim))

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
            torch.add(part, project(activated(expand, part, "relu")), out=rows)
        return out


class ConvGN(nn.Module):
    """Convolution + GroupNorm (+ ReLU): mmcv's ``ConvModule`` as the pixel decoder uses it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int,
                 bias: bool, relu: bool) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size,
                           padding=kernel_size // 2, bias=bias)
        self.gn = nn.GroupNorm(groups, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv(x))
        return torch.relu_(x) if self.relu else x  # in place: GroupNorm's output is our own

"""The faster formulations of the model's building blocks against PyTorch's own modules."""

from __future__ import annotations

import torch
from torch import nn

from vitadapter.modeling.layers import (
    pointwise_conv_to_contiguous,
    token_map,
    transposed_conv2x2_add,
)


def test_transposed_conv2x2_is_the_convolution_plus_the_residual():
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(6, 5, 2, 2).eval()
    x = torch.randn(2, 6, 3, 4)
    residual = torch.randn(2, 5, 6, 8)
    with torch.inference_mode():
        out = transposed_conv2x2_add(conv, x, residual)
        expected = conv(x) + residual
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_transposed_conv2x2_trains():
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(6, 5, 2, 2)
    x = torch.randn(1, 6, 3, 4, requires_grad=True)
    transposed_conv2x2_add(conv, x, torch.randn(1, 5, 6, 8)).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_transposed_conv2x2_falls_back_for_other_geometries():
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(3, 4, 3, 2, padding=1).eval()
    x, residual = torch.randn(1, 3, 4, 4), torch.randn(1, 4, 7, 7)
    with torch.inference_mode():
        assert torch.equal(transposed_conv2x2_add(conv, x, residual), conv(x) + residual)


def test_token_map_is_the_row_major_grid():
    tokens = torch.arange(2 * 6 * 3.0).view(2, 6, 3)  # (B, H*W, C), H=2, W=3
    grid = token_map(tokens, 2, 3)
    assert grid.shape == (2, 3, 2, 3) and grid.is_contiguous()
    assert torch.equal(grid[1, :, 1, 2], tokens[1, 5])


def test_depthwise_conv_of_the_token_groups_matches_the_plain_convolution():
    """DWConv runs its kernel on channels-last views of the 16:4:1 token groups."""
    from vitadapter.modeling.adapter import DWConv

    torch.manual_seed(0)
    module = DWConv(8).eval()
    x = torch.randn(2, 21 * 4, 8)  # a 4x4 grid: groups of 8x8, 4x4 and 2x2 tokens
    with torch.inference_mode():
        out = module(x, 4, 4)
        expected = torch.cat([
            module.dwconv(token_map(part, side, side)).flatten(2).transpose(1, 2)
            for part, side in zip(x.split([64, 16, 4], dim=1), (8, 4, 2), strict=True)], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_pointwise_conv_of_a_channels_last_map_is_contiguous():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 1).eval()
    x = torch.randn(2, 4, 3, 5).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = pointwise_conv_to_contiguous(conv, x)
        expected = conv(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

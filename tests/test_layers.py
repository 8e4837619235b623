"""The faster formulations of the model's building blocks against PyTorch's own modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitadapter.modeling import layers
from vitadapter.modeling.backbones.beit import Mlp
from vitadapter.modeling.layers import (
    Conv2d,
    add_mlp_residual,
    add_residual,
    conv_bn_relu,
    folded_conv_bn,
    pointwise_conv_to_contiguous,
    token_grid,
    token_map,
    transposed,
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


def test_transposed_conv2x2_of_channels_last_maps_is_channels_last():
    """Channels-last input and residual: the planes come from the pixels as rows and the
    interleaving moves whole pixels; the values are the convolution's plus the residual."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(6, 5, 2, 2).eval()
    x = torch.randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 5, 6, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = transposed_conv2x2_add(conv, x, residual)
        expected = conv(x.contiguous()) + residual.contiguous()
    assert out.permute(0, 2, 3, 1).is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # A channels-last input with a contiguous residual takes the contiguous layout.
    with torch.inference_mode():
        mixed = transposed_conv2x2_add(conv, x, residual.contiguous())
    assert mixed.is_contiguous()
    torch.testing.assert_close(mixed, expected, rtol=0, atol=1e-6)


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


def test_token_grid_is_a_channels_last_view_of_the_tokens():
    tokens = torch.arange(2 * 6 * 3.0).view(2, 6, 3)
    grid = token_grid(tokens, 2, 3)
    assert grid.shape == (2, 3, 2, 3) and grid.data_ptr() == tokens.data_ptr()
    assert grid.permute(0, 2, 3, 1).is_contiguous()
    assert torch.equal(grid, token_map(tokens, 2, 3))


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
        out = pointwise_conv_to_contiguous(x, conv.weight, conv.bias)
        expected = conv(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_blocked_transposing_copy_is_exact():
    """Sizes over one block in both directions, and ragged last blocks."""
    x = torch.randn(2, 600, 1100)
    with torch.inference_mode():
        out = transposed(x)
        back = transposed(out)
    assert out.is_contiguous() and torch.equal(out, x.transpose(1, 2))
    assert torch.equal(back, x)


def _conv_bn(kernel: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 6, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(6)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return conv, bn.eval()


def test_folded_batchnorm_equals_conv_then_batchnorm():
    x = torch.randn(2, 8, 7, 9)
    for kernel in (1, 3):
        conv, bn = _conv_bn(kernel)
        expected = torch.relu(bn(conv(x)))
        with torch.inference_mode():
            out = conv_bn_relu(conv, bn, x)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_folded_batchnorm_follows_changes_of_the_parameters_and_statistics():
    conv, bn = _conv_bn(3)
    x = torch.randn(1, 8, 5, 5)
    with torch.inference_mode():
        first = folded_conv_bn(conv, bn)
        assert folded_conv_bn(conv, bn)[0] is first[0]  # cached
    with torch.no_grad():
        bn.running_mean.add_(1.0)  # in place: a new version
    with torch.inference_mode():
        out = conv_bn_relu(conv, bn, x)
    torch.testing.assert_close(out, torch.relu(bn(conv(x))), rtol=1e-5, atol=1e-5)
    other_conv, _ = _conv_bn(3)
    with torch.no_grad():
        other_conv.weight.mul_(2.0)
    conv.load_state_dict(other_conv.state_dict())
    with torch.inference_mode():
        out = conv_bn_relu(conv, bn, x)
    torch.testing.assert_close(out, torch.relu(bn(other_conv(x))), rtol=1e-5, atol=1e-5)


def test_batchnorm_is_not_folded_in_training():
    conv, bn = _conv_bn(3)
    bn.train()
    x = torch.randn(2, 8, 5, 5)
    out = conv_bn_relu(conv, bn, x)
    assert torch.equal(out, torch.relu(nn.functional.batch_norm(
        conv(x), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)))


def test_pointwise_conv_module_runs_as_a_product_and_keeps_its_hooks():
    torch.manual_seed(0)
    conv = Conv2d(5, 7, 1).eval()
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(2, 5, 4, 6)
    with torch.inference_mode():
        out = conv(x)
    torch.testing.assert_close(out, nn.functional.conv2d(x, conv.weight, conv.bias),
                               rtol=0, atol=1e-6)
    assert out.is_contiguous() and seen == [torch.Size([2, 7, 4, 6])]


def test_upernet_concatenation_of_resized_maps_is_written_in_place_with_the_same_values():
    from vitadapter.modeling.heads.upernet import _cat_upsampled, _upsample

    torch.manual_seed(0)
    maps = [torch.randn(2, 3, 8, 10), torch.randn(2, 4, 4, 5), torch.randn(2, 2, 2, 3)]
    expected = torch.cat([maps[0], *(_upsample(m, (8, 10)) for m in maps[1:])], dim=1)
    with torch.inference_mode():
        out = _cat_upsampled(maps, torch.Size((8, 10)))
    assert torch.equal(out, expected)


def test_adapter_maps_are_channels_last_views_with_the_same_values(tiny_models, monkeypatch):
    """In fast inference on a CPU the adapter's output fusion runs on channels-last views of
    its tokens (no transposing copies); the maps equal those of the contiguous layout."""
    from vitadapter.modeling import adapter

    model = tiny_models["tiny-upstream"]
    backbone = model.backbone
    torch.manual_seed(0)
    image = torch.randn(2, 3, *model.config.inference.crop_size)
    with torch.inference_mode():
        fast = backbone(image)
        monkeypatch.setattr(adapter, "channels_last_maps", lambda x: False)
        contiguous = backbone(image)
    for a, b in zip(fast, contiguous, strict=True):
        assert a[1].permute(1, 2, 0).is_contiguous() and b.is_contiguous()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_gamma", [False, True])
def test_long_sequences_add_the_mlp_residual_in_blocks_of_rows_with_the_same_values(
        monkeypatch, with_gamma):
    torch.manual_seed(0)
    monkeypatch.setattr(layers, "_LONG_SEQUENCE", 40)
    monkeypatch.setattr(layers, "_MLP_ROWS", 16)
    norm, mlp = nn.LayerNorm(32).eval(), Mlp(32, 128).eval()
    gamma = torch.rand(32) if with_gamma else None
    rows_seen = []
    mlp.register_forward_hook(lambda _m, args, _out: rows_seen.append(args[0].shape[-2]))
    with torch.inference_mode():
        x = torch.randn(2, 41, 32)
        expected = add_residual(x, mlp(norm(x)), gamma)
        rows_seen.clear()
        out = add_mlp_residual(x.clone(), norm, mlp, gamma)
        assert rows_seen == [16, 16, 9]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        rows_seen.clear()
        short = x[:, :40]  # not longer than _LONG_SEQUENCE: one product
        torch.testing.assert_close(add_mlp_residual(short.clone(), norm, mlp, gamma),
                                   add_residual(short, mlp(norm(short)), gamma), rtol=0, atol=0)
        assert rows_seen == [40, 40]

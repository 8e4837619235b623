"""UperNet (mmseg 0.x ``UPerHead``) and the auxiliary ``FCNHead`` of the released checkpoints.

Every convolution is mmseg's ``ConvModule`` with a norm: a bias-free conv, BatchNorm and ReLU,
with the parameter names ``conv.*`` / ``bn.*`` of the official state dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ...config.schema import AuxiliaryHeadConfig, UperNetConfig
from ...ops import fast_inference
from ..layers import Conv2d, add_residual, conv_bn_relu


class ConvBNReLU(nn.Module):
    """mmseg's ``ConvModule(conv, SyncBN, ReLU)``; BatchNorm2d equals SyncBN in eval mode."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_relu(self.conv, self.bn, x)


def _upsample(x: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _cat_upsampled(maps: list[torch.Tensor], size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """``torch.cat([_upsample(m, size) for m in maps], dim=1)``, where :func:`fast_inference`
    with each resize written straight into its channels of the result (the same kernel, so the
    same values; no separate resized maps, whose fresh pages and second copy cost as much as
    the resizing)."""
    if not fast_inference():
        return torch.cat([m if m.shape[2:] == size else _upsample(m, size) for m in maps], 1)
    first = maps[0]
    out = first.new_empty(first.shape[0], sum(m.shape[1] for m in maps), *size)
    start = 0
    for m in maps:
        part = out[:, start:start + m.shape[1]]
        start += m.shape[1]
        if m.shape[2:] == size:
            part.copy_(m)
            continue
        for sample in range(m.shape[0]):  # one sample's channels are a contiguous block
            torch.ops.aten.upsample_bilinear2d.out(m[sample:sample + 1], list(size), False,
                                                   None, None, out=part[sample:sample + 1])
    return out


def pooling_matrix(size: int, bins: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """``(bins, size)`` weights of adaptive average pooling along one axis: bin ``i`` averages
    indexes ``floor(i*size/bins)`` to ``ceil((i+1)*size/bins)`` (PyTorch's bins)."""
    weights = torch.zeros(bins, size, dtype=dtype, device=device)
    for i in range(bins):
        start, stop = (i * size) // bins, -((-(i + 1) * size) // bins)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


class AdaptiveAvgPool(nn.Module):
    """``adaptive_avg_pool2d``; while exporting to ONNX (which has no adaptive pooling for
    sizes that are not multiples of the output) the same bins as two small matrix products."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return F.adaptive_avg_pool2d(x, self.scale)
        # The export fixes the crop size: the bins are constants of the graph.
        rows = pooling_matrix(int(x.shape[-2]), self.scale, x.dtype, x.device)
        cols = pooling_matrix(int(x.shape[-1]), self.scale, x.dtype, x.device)
        pooled = F.linear(x, cols)  # (B, C, H, scale)
        return F.linear(pooled.transpose(-1, -2), rows).transpose(-1, -2)


class PoolingBranch(nn.Sequential):
    """One pyramid-pooling branch: adaptive average pool to ``scale`` x ``scale``, 1x1 conv
    (named ``psp_modules.<i>.1.*`` as in mmseg, where index 0 is the parameter-free pool)."""

    def __init__(self, scale: int, in_channels: int, channels: int) -> None:
        super().__init__(AdaptiveAvgPool(scale), ConvBNReLU(in_channels, channels, 1))


@dataclass
class UperNetOutput:
    """What the head computes for a batch of crops (the intermediate maps for inspection)."""

    psp: torch.Tensor       # pyramid pooling + bottleneck on the last level, (B, C, H/32, W/32)
    feature: torch.Tensor   # fused FPN bottleneck, (B, C, H/4, W/4)
    logits: torch.Tensor    # conv_seg(feature), (B, num_classes, H/4, W/4)


class UperNetHead(nn.Module):
    def __init__(self, cfg: UperNetConfig) -> None:
        super().__init__()
        channels, last = cfg.channels, cfg.in_channels[-1]
        self.conv_seg = Conv2d(channels, cfg.num_classes, 1)
        self.dropout = nn.Dropout2d(cfg.dropout_ratio)
        self.psp_modules = nn.ModuleList([PoolingBranch(s, last, channels)
                                          for s in cfg.pool_scales])
        self.bottleneck = ConvBNReLU(last + len(cfg.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1)
                                            for c in cfg.in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels, 3)
                                        for _ in cfg.in_channels[:-1]])
        self.fpn_bottleneck = ConvBNReLU(len(cfg.in_channels) * channels, channels, 3)

    def forward(self, feats: list[torch.Tensor]) -> UperNetOutput:
        top = feats[-1]
        pooled = [branch(top) for branch in self.psp_modules]
        psp = self.bottleneck(_cat_upsampled([top, *pooled], top.shape[2:]))
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=False)]
        laterals.append(psp)
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = add_residual(laterals[i - 1],
                                           _upsample(laterals[i], laterals[i - 1].shape[2:]))
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)]
        outs.append(laterals[-1])
        feature = self.fpn_bottleneck(_cat_upsampled(outs, outs[0].shape[2:]))
        return UperNetOutput(psp, feature, self.conv_seg(self.dropout(feature)))


class FCNHead(nn.Module):
    """mmseg's FCNHead as the auxiliary head: ``num_convs`` 3x3 ConvModules on one level
    (optionally concatenated with the input and fused), dropout, 1x1 ``conv_seg``."""

    def __init__(self, cfg: AuxiliaryHeadConfig) -> None:
        super().__init__()
        self.in_index = cfg.in_index
        self.conv_seg = nn.Conv2d(cfg.channels, cfg.num_classes, 1)
        self.dropout = nn.Dropout2d(cfg.dropout_ratio)
        widths = [cfg.in_channels] + [cfg.channels] * cfg.num_convs
        self.convs = nn.Sequential(*[ConvBNReLU(a, b, 3)
                                     for a, b in pairwise(widths)])
        self.conv_cat = (ConvBNReLU(cfg.in_channels + cfg.channels, cfg.channels, 3)
                         if cfg.concat_input else None)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))

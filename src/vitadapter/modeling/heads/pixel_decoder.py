"""Mask2Former's pixel decoder: deformable-attention encoder over three levels plus an FPN step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...config.schema import HeadConfig
from ..deform_attn import MSDeformAttn
from ..layers import FFN, Conv2d, ConvGN, cached_constant, embedding, token_grid
from .position_encoding import sine_position_encoding


@cached_constant(maxsize=16)
def level_reference_points(shapes: tuple[tuple[int, int], ...], strides: tuple[int, ...],
                           device: torch.device) -> torch.Tensor:
    """Pixel centres of each level normalised to [0, 1], as mmdet's ``MlvlPointGenerator``
    computes them (``(j + 0.5) * stride / (W * stride)``), shape ``(1, sum(H*W), 1, 2)``."""
    points = []
    for (h, w), stride in zip(shapes, strides, strict=True):
        xs = (torch.arange(w, device=device) + 0.5) * stride
        ys = (torch.arange(h, device=device) + 0.5) * stride
        xx = xs.repeat(h)
        yy = ys.view(-1, 1).repeat(1, w).view(-1)
        factor = torch.tensor([[w, h]], dtype=torch.float32, device=device) * stride
        points.append(torch.stack([xx, yy], dim=-1) / factor)
    return torch.cat(points, dim=0)[None, :, None]


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: ``x = LN(x + MSDA(x + pos, x))``, ``x = LN(x + FFN(x))``."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int,
                 ffn_channels: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MSDeformAttn(dim, num_heads, num_levels, num_points)])
        self.ffns = nn.ModuleList([FFN(dim, ffn_channels)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        x = self.norms[0](x + self.attentions[0](x + pos, ref, x, shapes))
        return self.norms[1](self.ffns[0](x))


class DeformableEncoder(nn.Module):
    def __init__(self, dim: int, num_layers: int, **layer_kwargs: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DeformableEncoderLayer(dim, **layer_kwargs)
                                     for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, ref, shapes)
        return x


class MSDeformAttnPixelDecoder(nn.Module):
    """Encodes the three coarsest backbone levels with deformable attention and builds the
    1/4-resolution mask features with one FPN step.

    Returns ``(mask_features, memories)`` where memories are ordered coarse to fine
    (1/32, 1/16, 1/8 for a four-level backbone).
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        pd = cfg.pixel_decoder
        feat = cfg.feat_channels
        self.strides = tuple(pd.strides)
        self.float32 = pd.float32
        self.num_levels = pd.num_levels
        self.pos_num_feats = pd.pos_num_feats
        num_inputs = len(cfg.in_channels)
        # input_convs[i] takes backbone level (num_inputs - 1 - i): coarse levels first.
        self.input_convs = nn.ModuleList([
            ConvGN(cfg.in_channels[num_inputs - 1 - i], feat, 1, pd.num_groups,
                   bias=True, relu=False)
            for i in range(pd.num_levels)
        ])
        self.encoder = DeformableEncoder(feat, pd.num_layers, num_heads=pd.num_heads,
                                         num_levels=pd.num_levels, num_points=pd.num_points,
                                         ffn_channels=pd.ffn_channels)
        self.level_encoding = embedding(pd.num_levels, feat)
        num_fpn = num_inputs - pd.num_levels
        self.lateral_convs = nn.ModuleList([
            ConvGN(cfg.in_channels[i], feat, 1, pd.num_groups, bias=False, relu=False)
            for i in range(num_fpn)
        ])
        self.output_convs = nn.ModuleList([
            ConvGN(feat, feat, 3, pd.num_groups, bias=False, relu=True) for _ in range(num_fpn)
        ])
        self.mask_feature = Conv2d(feat, cfg.out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        device = feats[0].device.type
        if self.float32 and device != "meta":  # (no autocast on the meta device)
            with torch.autocast(device, enabled=False):
                return self._forward([f.float() for f in feats])
        return self._forward(feats)

    def _forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        device = feats[0].device
        num_inputs = len(feats)
        levels = [num_inputs - 1 - i for i in range(self.num_levels)]
        shapes = tuple(tuple(feats[lvl].shape[-2:]) for lvl in levels)
        tokens, pos = [], []
        for i, lvl in enumerate(levels):
            h, w = shapes[i]
            tokens.append(self.input_convs[i](feats[lvl]).flatten(2).transpose(1, 2))
            encoding = sine_position_encoding(h, w, self.pos_num_feats, device)
            level_pos = self.level_encoding.weight[i].view(1, -1, 1, 1) + encoding
            pos.append(level_pos.flatten(2).transpose(1, 2))
        ref = level_reference_points(shapes, tuple(self.strides[lvl] for lvl in levels), device)
        memory = self.encoder(torch.cat(tokens, 1), torch.cat(pos, 1), ref, shapes)

        outs = [token_grid(m, h, w)
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes,
                                     strict=True)]
        for i in range(num_inputs - self.num_levels - 1, -1, -1):
            lateral = self.lateral_convs[i](feats[i])  # a fresh map: add in place
            # The memory map is a transposed view of tokens: bilinear resizing is several
            # times faster on a contiguous copy.
            lateral.add_(F.interpolate(outs[-1].contiguous(), size=lateral.shape[-2:],
                                       mode="bilinear", align_corners=False))
            outs.append(self.output_convs[i](lateral))
        return self.mask_feature(outs[-1]), outs[:self.num_levels]

"""Normalised sine positional encoding (DETR / mmdet ``SinePositionalEncoding``)."""

from __future__ import annotations

import math

import torch

from ..layers import tensor_cache


@tensor_cache(16)
def sine_position_encoding(height: int, width: int, num_feats: int,
                           device: torch.device | str = "cpu",
                           temperature: float = 10000.0) -> torch.Tensor:
    """Encoding of an all-valid ``height x width`` map, shape ``(1, 2 * num_feats, H, W)``.

    Channel order is (y sin/cos interleaved, x sin/cos interleaved), values as mmdet computes
    them in float32 (cumulative sums normalised to (0, 2*pi]). Cached per size and device: the
    result is shared, never modify it in place.
    """
    eps, scale = 1e-6, 2 * math.pi
    ones = torch.ones(1, height, width, device=device)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

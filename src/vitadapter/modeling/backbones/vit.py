"""Plain (timm-style) ViT blocks of DeiT / AugReg: fused qkv with bias, optional layer scale,
and the absolute position embedding resized to the input grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import Linear, attention, fast_inference, use_reference
from ..layers import add_mlp_residual, add_residual, maybe_checkpoint
from .beit import DropPath, Mlp


def resize_pos_embed(pos_embed: torch.Tensor, side: int, height: int,
                     width: int) -> torch.Tensor:
    """The ``(1, 1 + side*side, C)`` embedding learned on a ``side x side`` grid, without its
    class-token slot, bicubically resized (align_corners False) to ``height x width``:
    ``(1, H*W, C)``."""
    grid = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Global multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if use_reference():  # the official order: (q k^T) * scale, softmax
            x = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        else:
            x = attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block with optional layer scale (``gamma1``/``gamma2``);
    ``with_cp``: gradient checkpointing in training (``set_grad_checkpointing``)."""

    with_cp = False

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 layer_scale: bool, eps: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1: nn.Parameter | None
        self.gamma2: nn.Parameter | None
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.ones(dim))
            self.gamma2 = nn.Parameter(torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self.with_cp, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_inference() and not self.training:
            x = add_residual(x, self.attn(self.norm1(x)), self.gamma1)
            return add_mlp_residual(x, self.norm2, self.mlp, self.gamma2)
        if self.gamma1 is None or self.gamma2 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))

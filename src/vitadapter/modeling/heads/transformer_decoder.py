"""Mask2Former's masked-attention transformer decoder (post-norm, cross -> self -> FFN)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import Linear, linear, use_reference
from ..layers import FFN


class MultiheadAttention(nn.Module):
    """Multi-head attention with packed q/k/v projections, parameter-compatible with
    ``torch.nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``).

    ``blocked`` is a boolean mask broadcastable to (B, heads, Q, K) where True means "do not
    attend" (the Mask2Former convention); a row must not be fully blocked.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                blocked: torch.Tensor | None = None) -> torch.Tensor:
        batch, num_query, dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        heads = self.num_heads

        def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return linear(x, w, b).view(batch, x.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
        scale = math.sqrt(1.0 / q.shape[-1])
        if use_reference():
            scores = (q * scale) @ k.transpose(-2, -1)
            if blocked is not None:
                scores = scores.masked_fill(blocked, float("-inf"))
            out = scores.softmax(-1) @ v
        else:
            # SDPA's boolean mask marks the keys to attend to: the inverse of ``blocked``.
            allowed = None if blocked is None else ~blocked
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
        return self.out_proj(out.transpose(1, 2).reshape(batch, num_query, dim))


class AttentionWithResidual(nn.Module):
    """mmcv's ``MultiheadAttention`` wrapper: positions added to query and key (not value),
    residual on the query. The inner module is ``attn`` as in the official state dict."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, num_heads)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                query_pos: torch.Tensor, key_pos: torch.Tensor,
                blocked: torch.Tensor | None = None) -> torch.Tensor:
        return query + self.attn(query + query_pos, key + key_pos, value, blocked)


class DecoderLayer(nn.Module):
    """Masked cross-attention to one memory level, self-attention, FFN; each followed by LN."""

    def __init__(self, dim: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionWithResidual(dim, num_heads),
                                         AttentionWithResidual(dim, num_heads)])
        self.ffns = nn.ModuleList([FFN(dim, ffn_channels)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        query = self.norms[0](self.attentions[0](query, memory, memory, query_pos, memory_pos,
                                                 blocked))
        query = self.norms[1](self.attentions[1](query, query, query, query_pos, query_pos))
        return self.norms[2](self.ffns[0](query))


class TransformerDecoder(nn.Module):
    """The decoder layers and the final LayerNorm applied before every prediction."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.layers = nn.ModuleList([DecoderLayer(dim, num_heads, ffn_channels)
                                     for _ in range(num_layers)])
        self.post_norm = nn.LayerNorm(dim)

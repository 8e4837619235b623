"""Multi-scale deformable attention module, shared by the adapter and the pixel decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import Linear, fast_inference, ms_deform_attn, use_reference


class MSDeformAttn(nn.Module):
    """Projections around :func:`vitadapter.ops.ms_deform_attn`.

    The official adapter op (with ``deform_ratio``) and mmcv's ``MultiScaleDeformableAttention``
    of the pixel decoder have the same parameters (``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``) and the same arithmetic; ``value_ratio`` narrows the value
    projection as the adapter's ``deform_ratio`` does. No residual is added here.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_levels: int, num_points: int,
                 value_ratio: float = 1.0) -> None:
        super().__init__()
        value_dim = int(embed_dim * value_ratio)
        if value_dim % num_heads:
            raise ValueError(f"value width {value_dim} is not divisible by {num_heads} heads")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = Linear(embed_dim, value_dim)
        self.output_proj = Linear(value_dim, embed_dim)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """query (B, Q, C); reference_points (B|1, Q, L|1, 2) normalised (x, y) in float32;
        value (B, S, C) over the levels of ``spatial_shapes``. Returns (B, Q, C)."""
        batch, num_query, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_query, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_query, heads, levels * points)
        weights = _softmax(weights.float()).view(batch, num_query, heads, levels, points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32,
                                  device=query.device)
        reference_points = reference_points[:, :, None, :, None, :]
        normalizer = normalizer[None, None, None, :, None, :]
        if use_reference():  # the official expression (which the ONNX export traces)
            locations = reference_points + offsets.float() / normalizer
        else:
            # The same rounding in one pass, the normaliser laid out per (head, level, point):
            # PyTorch's kernel broadcasts a (1, ..., 2) block 5x slower (3.1 against 0.6 ms at
            # the pixel decoder's 5376 queries).
            normalizer = normalizer.expand(1, 1, heads, levels, points, 2).contiguous()
            locations = torch.addcdiv(reference_points, offsets.float(), normalizer)
        out = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(out)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. PyTorch's CPU kernel is slow for rows as short as
    these (levels x points: 4 to 12): there, without autograd, the same arithmetic as
    separate passes, 10x faster (equal to ``softmax`` within float32 rounding)."""
    if x.device.type != "cpu" or not fast_inference():
        return x.softmax(-1)
    out = torch.sub(x, x.amax(-1, keepdim=True)).exp_()
    return out.mul_(out.sum(-1, keepdim=True).reciprocal_())

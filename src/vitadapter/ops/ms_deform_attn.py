"""Multi-scale deformable attention, the sampling core shared by the adapter and the decoder.

Signature as in Deformable-DETR, mmcv and transformers::

    value               (B, S, heads, D)        levels flattened row-major and concatenated
    spatial_shapes      [(H_0, W_0), ...]       one (H, W) per level, sum(H*W) == S
    sampling_locations  (B, Q, heads, L, P, 2)  normalised (x, y) in [0, 1]
    attention_weights   (B, Q, heads, L, P)     already softmax-ed over L*P
    -> output           (B, Q, heads * D)

Sampling is bilinear with zero padding and ``align_corners=False`` semantics: a location x in
[0, 1] reads pixel coordinate ``x * W - 0.5``, exactly like the CUDA kernel of the official code.

Two implementations give the same numbers up to float32 summation order:

* the fast path (:func:`ms_deform_attn_fast`, the default on CPU and CUDA) folds the four
  bilinear corner weights into the attention weights and does one weighted gather-sum
  (``embedding_bag``) per chunk of queries over a zero-bordered copy of the value; it never
  materialises the samples;
* the reference path (:func:`ms_deform_attn_reference`) is the official pure-PyTorch algorithm:
  one ``grid_sample`` per level, stacked, weighted and summed.

``with vitadapter.ops.reference_path(): ...`` forces the reference. The reference also runs when
autograd needs gradients (the fast path is inference-only) and for levels too large for the fast
path's float32 row arithmetic (about 4000x4000 and up).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dispatch import use_reference

SpatialShapes = Sequence[tuple[int, int]]

# Gathered rows per query chunk of the fast path: its int32 indices and float32 weights then take
# 32 MB, plus about as much in smaller temporaries. Few large chunks keep the number of parallel
# regions small, which matters when the CPU cores are shared.
_CHUNK_ROWS = 1 << 22
# Pixel coordinates are clamped to [-1, W]: the corners read columns -1 .. W + 1, so the fast
# path's value copy has one zero column (row) before each level and two after.
_BORDER = 3


def ms_deform_attn(value: torch.Tensor, spatial_shapes: SpatialShapes | torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   ) -> torch.Tensor:
    """Multi-scale deformable attention (see the module docstring for shapes).

    Runs in float32 whatever the input dtype (sampling locations lose too much precision in
    half precision) and returns the dtype of ``value``.
    """
    shapes = _as_shape_list(spatial_shapes)
    _check_inputs(value, shapes, sampling_locations, attention_weights)
    sampling_locations = sampling_locations.float()
    attention_weights = attention_weights.float()
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (value, sampling_locations, attention_weights))
    if use_reference() or needs_grad or not _fast_path_exact(shapes):
        out = ms_deform_attn_reference(value.float(), shapes, sampling_locations,
                                       attention_weights)
    else:
        out = ms_deform_attn_fast(value, shapes, sampling_locations, attention_weights)
    return out.to(value.dtype)


def ms_deform_attn_fast(value: torch.Tensor, spatial_shapes: SpatialShapes,
                        sampling_locations: torch.Tensor,
                        attention_weights: torch.Tensor) -> torch.Tensor:
    """Bilinear corners folded into the attention weights, one ``embedding_bag`` per query chunk.

    Same arguments as :func:`ms_deform_attn_reference` (float32 locations and weights, any float
    ``value``); returns float32. No autograd (it writes into preallocated tensors).
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    device = value.device
    table, starts = _bordered_table(value, spatial_shapes)
    index_dtype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    block = table.shape[0] // (batch * heads)
    # Per-level constants spelled out over the points, so that the broadcasting ops below run
    # over long contiguous inner loops.
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32,
                         device=device)[:, None].expand(levels, points, 2).contiguous()
    row_widths = sizes[..., 0] + _BORDER  # (L, P)
    lowest = torch.full_like(sizes, -1.0)
    minus_half = torch.tensor(-0.5, device=device)
    # Row of pixel (0, 0) of each level in each (batch, head) block: (B, 1, heads, L, 1).
    origins = (torch.arange(batch * heads, device=device, dtype=index_dtype) * block
               ).view(batch, 1, heads, 1, 1) + torch.tensor(
        [start + w + _BORDER + 1 for (_, w), start in zip(spatial_shapes, starts, strict=True)],
        device=device, dtype=index_dtype)[:, None]
    # Row steps from the top-left corner to the four corners: (L, 4, 1).
    steps = torch.tensor([[0, 1, w + _BORDER, w + _BORDER + 1] for _, w in spatial_shapes],
                         device=device, dtype=index_dtype)[:, :, None]
    out = torch.empty(batch, queries, heads * dim, device=device)
    chunk = max(1, _CHUNK_ROWS // (batch * heads * levels * points * 4))
    for first in range(0, queries, chunk):
        count = min(chunk, queries - first)
        pixel = torch.addcmul(minus_half, sampling_locations[:, first:first + count], sizes)
        pixel.clamp_(lowest, sizes)  # beyond that only the border is read
        low = pixel.floor()
        frac = pixel.sub_(low)
        # Float32 row arithmetic within a level is exact (_fast_path_exact).
        top_left = torch.addcmul(low[..., 0], low[..., 1], row_widths).to(index_dtype)
        top_left += origins
        # A bag is one (batch, query, head), rows (level, corner, point) in any order.
        index = torch.empty(batch, count, heads, levels, 4, points, dtype=index_dtype,
                            device=device)
        torch.add(top_left[..., None, :], steps, out=index)
        attn = attention_weights[:, first:first + count]
        fx, fy = frac[..., 0], frac[..., 1]
        by_row = torch.empty(batch, count, heads, levels, 2, points, device=device)
        torch.mul(attn, fy, out=by_row[..., 1, :])
        torch.sub(attn, by_row[..., 1, :], out=by_row[..., 0, :])
        by_col = torch.stack((1 - fx, fx), dim=-2)
        weight = torch.empty(index.shape, device=device)
        torch.mul(by_row[..., :, None, :], by_col[..., None, :, :],
                  out=weight.view(batch, count, heads, levels, 2, 2, points))
        rows = levels * 4 * points
        bags = F.embedding_bag(index.view(-1, rows), table,
                               per_sample_weights=weight.view(-1, rows), mode="sum")
        out[:, first:first + count] = bags.view(batch, count, heads * dim)
    return out


def _fast_path_exact(shapes: list[tuple[int, int]]) -> bool:
    """Whether every bordered level is small enough for exact float32 row arithmetic."""
    return all((h + _BORDER) * (w + _BORDER) < 2**24 for h, w in shapes)


def _bordered_table(value: torch.Tensor, spatial_shapes: SpatialShapes,
                    ) -> tuple[torch.Tensor, list[int]]:
    """float32 rows (B * heads * S', D): per (batch, head) every level with a zero border of
    one row/column before and two after; also the first row of each level in a block."""
    batch, _, heads, dim = value.shape
    starts, size = [], 0
    for h, w in spatial_shapes:
        starts.append(size)
        size += (h + _BORDER) * (w + _BORDER)
    table = torch.zeros(batch, heads, size, dim, device=value.device)
    levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    for (h, w), start, level in zip(spatial_shapes, starts, levels, strict=True):
        bordered = table[:, :, start:start + (h + _BORDER) * (w + _BORDER)]
        bordered = bordered.view(batch, heads, h + _BORDER, w + _BORDER, dim)
        bordered[:, :, 1:h + 1, 1:w + 1] = level.view(batch, h, w, heads, dim).permute(
            0, 3, 1, 2, 4)
    return table.view(-1, dim), starts


def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: SpatialShapes,
                             sampling_locations: torch.Tensor,
                             attention_weights: torch.Tensor) -> torch.Tensor:
    """One ``grid_sample`` per level, stacked and reduced: the official pure-PyTorch algorithm."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries,
                                                        levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


def _as_shape_list(spatial_shapes: SpatialShapes | torch.Tensor) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _check_inputs(value: torch.Tensor, shapes: list[tuple[int, int]],
                  locations: torch.Tensor, weights: torch.Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, heads, D), got shape {tuple(value.shape)}")
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise ValueError("sampling_locations must be (B, Q, heads, L, P, 2), "
                         f"got shape {tuple(locations.shape)}")
    if weights.shape != locations.shape[:-1]:
        raise ValueError(f"attention_weights shape {tuple(weights.shape)} does not match "
                         f"sampling_locations {tuple(locations.shape)}")
    total = sum(h * w for h, w in shapes)
    if value.shape[1] != total:
        raise ValueError(f"value has {value.shape[1]} positions but spatial_shapes {shapes} "
                         f"hold {total}")
    if locations.shape[3] != len(shapes):
        raise ValueError(f"sampling_locations has {locations.shape[3]} levels but "
                         f"spatial_shapes has {len(shapes)}")
    if value.shape[2] != locations.shape[2] or value.shape[0] != locations.shape[0]:
        raise ValueError("value and sampling_locations disagree on batch size or heads")

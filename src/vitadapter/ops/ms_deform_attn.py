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

When autograd needs gradients the fast path runs as a ``torch.autograd.Function``
(:class:`_MSDeformAttnFast`) that keeps only its inputs and recomputes each chunk's rows and
weights in backward: the value gradient is the transposed gather-sum (the gathered rows sorted
by the value row they read, then one weighted ``embedding_bag`` over the output gradient), the
attention-weight and location gradients follow from the dot products of the output gradient
with the gathered rows. Gradients equal those of the
reference (``grid_sample``'s, zero padding) up to float32 summation order, except on pixel-grid
lines, where bilinear interpolation has a kink and an ulp of rounding picks the side.

``with vitadapter.ops.reference_path(): ...`` forces the reference. The reference also runs for
levels too large for the fast path's float32 row arithmetic (about 4000x4000 and up).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .dispatch import use_reference

SpatialShapes = Sequence[tuple[int, int]]

# Gathered rows per query chunk of the fast path: its int32 indices and float32 weights then take
# 64 MB, plus about as much in smaller temporaries. Few large chunks keep the number of parallel
# regions small, which matters when the CPU cores are shared, and one chunk (every call of the
# seed preset at 896) needs no copy of its result.
_CHUNK_ROWS = 1 << 23
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
    if use_reference() or not _fast_path_exact(shapes):
        out = ms_deform_attn_reference(value.float(), shapes, sampling_locations,
                                       attention_weights)
    elif needs_grad:
        out = _MSDeformAttnFast.apply(value, shapes, sampling_locations, attention_weights)
    else:
        out = ms_deform_attn_fast(value, shapes, sampling_locations, attention_weights)
    return out.to(value.dtype)


def ms_deform_attn_fast(value: torch.Tensor, spatial_shapes: SpatialShapes,
                        sampling_locations: torch.Tensor,
                        attention_weights: torch.Tensor) -> torch.Tensor:
    """Bilinear corners folded into the attention weights, one ``embedding_bag`` per query chunk.

    Same arguments as :func:`ms_deform_attn_reference` (float32 locations and weights, any float
    ``value``); returns float32. Float64 locations and weights make it compute and return
    float64 (for ``gradcheck``). No autograd (it writes into preallocated tensors): the
    differentiable form is :class:`_MSDeformAttnFast`.
    """
    batch, _, heads, dim = value.shape
    queries = sampling_locations.shape[1]
    plan = _Plan(value, spatial_shapes, sampling_locations, attention_weights)
    table, _ = _bordered_table(value, spatial_shapes, plan.dtype)

    def gather(first: int, count: int) -> torch.Tensor:
        index, weight, _, _ = plan.corners(sampling_locations, attention_weights, first, count)
        bags = F.embedding_bag(index.view(-1, plan.rows), table,
                               per_sample_weights=weight.view(-1, plan.rows), mode="sum")
        return bags.view(batch, count, heads * dim)

    chunks = list(plan.chunks())
    if len(chunks) == 1:  # the result itself, no copy into a preallocated output
        return gather(*chunks[0])
    out = torch.empty(batch, queries, heads * dim, device=value.device, dtype=plan.dtype)
    for first, count in chunks:
        out[:, first:first + count] = gather(first, count)
    return out


class _Plan:
    """Per-call constants of the fast path and the rows and weights of each query chunk."""

    def __init__(self, value: torch.Tensor, spatial_shapes: SpatialShapes,
                 sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> None:
        batch, _, heads, _ = value.shape
        _, queries, _, levels, points, _ = sampling_locations.shape
        device = value.device
        self.dtype = (torch.float64 if torch.float64 in
                      (sampling_locations.dtype, attention_weights.dtype) else torch.float32)
        self.shape = (batch, heads, levels, points)
        self.queries = queries
        self.rows = levels * 4 * points  # gathered rows per bag
        block = sum((h + _BORDER) * (w + _BORDER) for h, w in spatial_shapes)
        self.index_dtype = torch.int32 if batch * heads * block < 2**31 else torch.int64
        # Per-level constants spelled out over the points, so that the broadcasting ops below
        # run over long contiguous inner loops.
        self.sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=self.dtype,
                                  device=device)[:, None].expand(levels, points, 2).contiguous()
        self.row_widths = self.sizes[..., 0] + _BORDER  # (L, P)
        self.lowest = torch.full_like(self.sizes, -1.0)
        self.minus_half = torch.tensor(-0.5, device=device, dtype=self.dtype)
        starts = _level_starts(spatial_shapes)
        # Row of pixel (0, 0) of each level in each (batch, head) block: (B, 1, heads, L, 1).
        self.origins = (torch.arange(batch * heads, device=device, dtype=self.index_dtype)
                        * block).view(batch, 1, heads, 1, 1) + torch.tensor(
            [start + w + _BORDER + 1 for (_, w), start in zip(spatial_shapes, starts,
                                                              strict=True)],
            device=device, dtype=self.index_dtype)[:, None]
        # Row steps from the top-left corner to each corner, per (level, point): (4, L * P).
        self.steps = torch.tensor([[0, 1, w + _BORDER, w + _BORDER + 1]
                                   for _, w in spatial_shapes],
                                  device=device, dtype=self.index_dtype
                                  ).t()[:, :, None].expand(4, levels, points).reshape(4, -1)

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, int]]:
        """(first query, query count) of each chunk of about ``rows`` gathered rows (default
        ``_CHUNK_ROWS``)."""
        batch, heads, levels, points = self.shape
        chunk = max(1, (rows or _CHUNK_ROWS) // (batch * heads * levels * points * 4))
        for first in range(0, self.queries, chunk):
            yield first, min(chunk, self.queries - first)

    def corners(self, sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                first: int, count: int, inside: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows and folded weights of the chunk's corners, both (B, count, heads, 4, L * P),
        corners ordered top-left, top-right, bottom-left, bottom-right; the fractional pixel
        positions (B, count, heads, L, P, 2); with ``inside``, where the unclamped pixel
        coordinate lies in [-1, W] (resp. [-1, H]), i.e. where clamping passes gradients."""
        pixel = torch.addcmul(self.minus_half, sampling_locations[:, first:first + count],
                              self.sizes)
        mask = (pixel >= self.lowest) & (pixel <= self.sizes) if inside else None
        pixel.clamp_(self.lowest, self.sizes)  # beyond that only the border is read
        # A NaN location (a model with NaN weights) reads a border row with a NaN weight: the
        # output is NaN, as the reference path gives, instead of an index out of range.
        low = pixel.floor().nan_to_num_(nan=-1.0)
        frac = pixel.sub_(low)
        # Float32 row arithmetic within a level is exact (_fast_path_exact).
        top_left = torch.addcmul(low[..., 0], low[..., 1], self.row_widths).to(self.index_dtype)
        top_left += self.origins
        # A bag is one (batch, query, head), its rows in any order: here (corner, level,
        # point), so that each corner's rows and weights are one write from operands of the
        # same shape (broadcasting over the short level x point rows is 2-3x slower).
        batch, _, heads, levels, points = top_left.shape
        shape = (batch, count, heads, 4, levels * points)
        top_left = top_left.view(batch, count, heads, levels * points)
        index = torch.empty(shape, dtype=self.index_dtype, device=top_left.device)
        for corner in range(4):
            torch.add(top_left, self.steps[corner], out=index[..., corner, :])
        attn = attention_weights[:, first:first + count].flatten(3).to(self.dtype)
        fx, fy = frac[..., 0].flatten(3), frac[..., 1].flatten(3)
        lower = attn * fy  # the bottom corners' share
        upper = attn - lower
        left = 1 - fx
        weight = torch.empty(shape, dtype=self.dtype, device=top_left.device)
        torch.mul(upper, left, out=weight[..., 0, :])
        torch.mul(upper, fx, out=weight[..., 1, :])
        torch.mul(lower, left, out=weight[..., 2, :])
        torch.mul(lower, fx, out=weight[..., 3, :])
        return index, weight, frac, mask


class _MSDeformAttnFast(torch.autograd.Function):
    """The fast path with a backward that recomputes each chunk's rows and weights.

    Only the inputs are kept for backward. With ``w`` the folded weight of a gathered row
    (attention weight times bilinear corner weight) and ``dw = <grad_out of its bag, row>``:
    the value gradient is the transposed gather-sum, each bag's output gradient times ``w``
    added to the row it read (:func:`_scatter_rows`; what falls on the zero border is
    dropped); the attention weight gradient is the sum over the corners of ``dw`` times the
    bilinear corner weight; the location gradient is the attention weight times the sum over
    the corners of ``dw`` times the derivative of the bilinear corner weight, times W (x) or H
    (y), and zero where clamping moved the pixel coordinate (there every corner reads zero
    padding, as in ``grid_sample``). Rows are addressed in ``value`` itself rather than in a
    bordered copy, to keep memory low.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                ) -> torch.Tensor:
        ctx.spatial_shapes = spatial_shapes
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        return ms_deform_attn_fast(value, spatial_shapes, sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor,
                 ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, torch.Tensor | None]:
        value, locations, attention = ctx.saved_tensors
        shapes = ctx.spatial_shapes
        need_value, _, need_locations, need_attention = ctx.needs_input_grad
        need_rows = need_locations or need_attention
        plan = _Plan(value, shapes, locations, attention)
        batch, heads, levels, points = plan.shape
        dim = value.shape[-1]
        positions = value.shape[1] * batch * heads
        # Per bordered-table row its row of value viewed as (B * S * heads, D), or for the
        # border one past the end: there the value gradient collects what falls on zero
        # padding, and the row dot products below read row 0 and are set to zero.
        destination = _value_rows(shapes, batch, heads, value.device)
        # The rows are read for the weight and location gradients only.
        rows_table = value.to(plan.dtype).reshape(-1, dim) if need_rows else None
        grad_rows = (value.new_zeros(positions + 1, dim, dtype=plan.dtype)
                     if need_value else None)
        grad_out = grad_out.to(plan.dtype)
        grad_locations = torch.empty_like(locations) if need_locations else None
        grad_attention = torch.empty_like(attention) if need_attention else None
        # Chunks of 1/32 of the forward's: the temporaries take about 50 bytes per gathered row
        # (sort keys and order, bag ids, weights), and as the value gradient is accumulated in
        # place small chunks cost no time.
        for first, count in plan.chunks(_CHUNK_ROWS // 32):
            index, weight, frac, inside = plan.corners(locations, attention, first, count,
                                                       inside=need_locations)
            rows = destination.index_select(0, index.view(-1))
            weight = weight.view(-1, plan.rows)
            grad_bags = grad_out[:, first:first + count].reshape(-1, dim)
            if grad_rows is not None:
                _scatter_rows(grad_rows, rows, weight, grad_bags)
            if rows_table is None:
                continue
            border = rows == positions
            rows.masked_fill_(border, 0)
            # The gradient of the per-sample weights: one dot product per gathered row.
            weight.requires_grad_()
            with torch.enable_grad():
                bags = F.embedding_bag(rows.view(-1, plan.rows), rows_table,
                                       per_sample_weights=weight, mode="sum")
                (dw,) = torch.autograd.grad(bags, weight, grad_bags)
            del bags, weight
            dw.masked_fill_(border.view(dw.shape), 0)
            # dw per (B, count, heads, L, row of corners, column of corners, P); along x the
            # corner weights are (1 - fx, fx), along y (1 - fy, fy).
            dw = dw.view(batch, count, heads, 2, 2, levels, points).permute(0, 1, 2, 5, 3, 4, 6)
            fx, fy = frac[..., None, :, 0], frac[..., 1]
            along_x = dw[..., 1, :] - dw[..., 0, :]  # d/dfx per row of corners
            per_row = torch.addcmul(dw[..., 0, :], fx, along_x)  # summed over the columns
            along_y = per_row[..., 1, :] - per_row[..., 0, :]  # d/dfy
            if grad_attention is not None:
                grad_attention[:, first:first + count] = torch.addcmul(
                    per_row[..., 0, :], fy, along_y)
            if grad_locations is not None and inside is not None:
                d_fx = torch.addcmul(along_x[..., 0, :], fy,
                                     along_x[..., 1, :] - along_x[..., 0, :])
                grad = torch.stack((d_fx, along_y), dim=-1)
                grad *= attention[:, first:first + count, ..., None]
                grad *= plan.sizes
                grad.masked_fill_(~inside, 0)
                grad_locations[:, first:first + count] = grad
        grad_value = None
        if grad_rows is not None:
            grad_value = grad_rows[:-1].view(value.shape).to(value.dtype)
        return grad_value, None, grad_locations, grad_attention


def _scatter_rows(out: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                  grad_bags: torch.Tensor) -> None:
    """Transpose of the gather-sum: adds to ``out[r]`` the sum over the gathered (bag, k) with
    ``rows[bag * K + k] == r`` of ``weight[bag, k] * grad_bags[bag]``.

    A stable sort groups the gathered rows by destination, then one forward ``embedding_bag``
    sums, for each destination row that occurs, the bags' gradients in bag order: much faster
    than ``embedding_bag``'s own backward (one tiny axpy per gathered row), and deterministic.
    """
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=out.shape[0])
    present = counts.nonzero().squeeze(1)
    offsets = counts.new_zeros(present.shape[0] + 1)
    torch.cumsum(counts[present], 0, out=offsets[1:])
    sums = F.embedding_bag(order // weight.shape[1], grad_bags, offsets, mode="sum",
                           per_sample_weights=weight.view(-1)[order], include_last_offset=True)
    out.index_copy_(0, present, out.index_select(0, present).add_(sums))


def _value_rows(spatial_shapes: SpatialShapes, batch: int, heads: int,
                device: torch.device) -> torch.Tensor:
    """For each row of the bordered table, its row in the value gradient viewed as
    (B * S * heads, D); border rows map to one row past the end."""
    positions = []
    start = 0
    for h, w in spatial_shapes:
        level = torch.full((h + _BORDER, w + _BORDER), -1, dtype=torch.int64, device=device)
        level[1:h + 1, 1:w + 1] = torch.arange(start, start + h * w, device=device).view(h, w)
        positions.append(level.view(-1))
        start += h * w
    position = torch.cat(positions)  # (S',) value position or -1 on the border
    rows = ((torch.arange(batch, device=device)[:, None, None] * start + position) * heads
            + torch.arange(heads, device=device)[:, None])  # (B, heads, S')
    rows = torch.where(position < 0, batch * start * heads, rows).view(-1)
    return rows.int() if batch * start * heads < 2**31 else rows


def _fast_path_exact(shapes: list[tuple[int, int]]) -> bool:
    """Whether every bordered level is small enough for exact float32 row arithmetic."""
    return all((h + _BORDER) * (w + _BORDER) < 2**24 for h, w in shapes)


def _level_starts(spatial_shapes: SpatialShapes) -> list[int]:
    """First row of each bordered level in a (batch, head) block of the table."""
    starts, size = [], 0
    for h, w in spatial_shapes:
        starts.append(size)
        size += (h + _BORDER) * (w + _BORDER)
    return starts


def _bordered_table(value: torch.Tensor, spatial_shapes: SpatialShapes,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[int]]:
    """Rows (B * heads * S', D) of ``dtype``: per (batch, head) every level with a zero border
    of one row/column before and two after; also the first row of each level in a block."""
    batch, _, heads, dim = value.shape
    starts = _level_starts(spatial_shapes)
    size = sum((h + _BORDER) * (w + _BORDER) for h, w in spatial_shapes)
    # Only the border is zeroed: the interior is overwritten right away.
    table = torch.empty(batch, heads, size, dim, device=value.device, dtype=dtype)
    levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    for (h, w), start, level in zip(spatial_shapes, starts, levels, strict=True):
        bordered = table[:, :, start:start + (h + _BORDER) * (w + _BORDER)]
        bordered = bordered.view(batch, heads, h + _BORDER, w + _BORDER, dim)
        bordered[:, :, 0].zero_()
        bordered[:, :, h + 1:].zero_()
        bordered[:, :, 1:h + 1, 0].zero_()
        bordered[:, :, 1:h + 1, w + 1:].zero_()
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

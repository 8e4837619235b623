"""Multi-scale deformable attention, the sampling core shared by the adapter and the decoder.

Signature as in Deformable-DETR, mmcv and transformers::

    value               (B, S, heads, D)        levels flattened row-major and concatenated
    spatial_shapes      [(H_0, W_0), ...]       one (H, W) per level, sum(H*W) == S
    sampling_locations  (B, Q, heads, L, P, 2)  normalised (x, y) in [0, 1]
    attention_weights   (B, Q, heads, L, P)     already softmax-ed over L*P
    -> output           (B, Q, heads * D)

Sampling is bilinear with zero padding and ``align_corners=False`` semantics: a location x in
[0, 1] reads pixel coordinate ``x * W - 0.5``, exactly like the CUDA kernel of the official code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SpatialShapes = Sequence[tuple[int, int]]


def ms_deform_attn(value: torch.Tensor, spatial_shapes: SpatialShapes | torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   ) -> torch.Tensor:
    """Multi-scale deformable attention (see the module docstring for shapes).

    Runs in float32 whatever the input dtype (sampling locations lose too much precision in
    half precision) and returns the dtype of ``value``.
    """
    shapes = _as_shape_list(spatial_shapes)
    _check_inputs(value, shapes, sampling_locations, attention_weights)
    dtype = value.dtype
    value = value.float()
    sampling_locations = sampling_locations.float()
    attention_weights = attention_weights.float()
    out = ms_deform_attn_reference(value, shapes, sampling_locations, attention_weights)
    return out.to(dtype)


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

"""Ground truth for the Mask2Former loss from a semantic label map (the official ``ToMask``)."""

from __future__ import annotations

import torch


def masks_from_semantic(label_map: torch.Tensor, ignore_index: int = 255
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ids present in ``label_map`` (H, W) in ascending order, ``ignore_index`` left out,
    as int64 (n,), and one boolean mask (n, H, W) per id (``label_map == id``)."""
    if label_map.dim() != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {tuple(label_map.shape)}")
    labels = torch.unique(label_map)
    labels = labels[labels != ignore_index].long()
    masks = label_map.unsqueeze(0) == labels.to(label_map.dtype)[:, None, None]
    return labels, masks

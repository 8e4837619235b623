"""Mask2Former head for semantic segmentation: pixel decoder, masked-attention decoder and the
class x mask semantic inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config.schema import HeadConfig
from ...ops import fast_inference
from ..layers import embedding
from .pixel_decoder import MSDeformAttnPixelDecoder
from .position_encoding import sine_position_encoding
from .transformer_decoder import TransformerDecoder


@dataclass
class HeadOutput:
    """Everything the head computes for a batch of crops."""

    cls_logits: list[torch.Tensor]   # per prediction (before layer 0, then after each layer)
    mask_logits: list[torch.Tensor]  # (B, Q, H/4, W/4) per prediction
    memories: list[torch.Tensor]     # pixel-decoder outputs, coarse to fine
    mask_features: torch.Tensor      # (B, C, H/4, W/4)


def semantic_scores(cls_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores ``sum_q softmax(cls)[q, c] * sigmoid(mask)[q]``; the no-object column is
    dropped after the softmax. Returns (B, num_classes, H, W)."""
    cls = F.softmax(cls_logits, dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", cls, mask_logits.sigmoid())


def crop_scores(cls_logits: torch.Tensor, mask_logits: torch.Tensor, size: Sequence[int],
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Meta's per-crop combination (DINOv3 ``slide_inference``): the class softmax without the
    no-object column, and the sigmoid of the mask logits bilinearly resized
    (``align_corners=False``) to the crop's ``size`` (h, w), summed over the queries. Both
    operands are cast to ``dtype`` before the sum: float32 is exact, ``torch.bfloat16`` is
    Meta's own cast (on every device). Returns (B, num_classes, h, w) float32."""
    cls = F.softmax(cls_logits, dim=-1)[..., :-1]
    factor = _upscale_factor(mask_logits, size) if dtype == torch.float32 else 0
    if factor and fast_inference():
        return _crop_scores_in_bands(cls, mask_logits, (size[0], size[1]), factor)
    masks = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    # In place where nothing else holds it: (B, Q, h, w) is 105 MB for 100 queries at 512.
    masks = masks.sigmoid_() if fast_inference() else masks.sigmoid()
    return torch.einsum("bqc,bqhw->bchw", cls.to(dtype), masks.to(dtype)).float()


# Output pixels per band of :func:`_crop_scores_in_bands`: the band's masks (100 queries:
# 6.5 MB) and scores stay in cache between the resize, the sigmoid and the product.
_BAND_PIXELS = 1 << 14


def _upscale_factor(mask_logits: torch.Tensor, size: Sequence[int]) -> int:
    """The factor f when the crop's ``size`` is f times the masks' on both sides and f is a
    power of two (the masks are at 1/4 of the crop), else 0."""
    rows, cols = mask_logits.shape[-2:]
    factor = size[0] // rows
    exact = factor * rows == size[0] and factor * cols == size[1]
    return factor if exact and factor > 1 and factor & (factor - 1) == 0 else 0


def _crop_scores_in_bands(cls: torch.Tensor, mask_logits: torch.Tensor,
                          size: tuple[int, int], factor: int) -> torch.Tensor:
    """:func:`crop_scores` in float32, a band of output rows at a time, with the same values:
    no (B, Q, h, w) map of resized masks (105 MB at 512, 321 MB at 896) written and read back.

    A band starts on an output row ``f * s`` (f: ``factor``, the power of two by which
    :func:`_upscale_factor` found ``size`` larger than the masks); its masks are the
    bilinear resize of source rows ``s - 1 ..`` (clamped to the map) by the same factor, so
    every output row gets the source rows and the weights the whole-map resize gives it (the
    source coordinates differ by the whole number ``s - 1``, exactly in float32, and a map
    edge is clamped alike). Values can still differ in the last bit where PyTorch's resize
    kernel rounds a pixel differently (vector or scalar code, by where its threads split the
    work, as the whole-map resize itself does with another thread count)."""
    batch, queries, rows, _ = mask_logits.shape
    height, width = size
    band_rows = max(1, _BAND_PIXELS // (width * factor)) * factor
    out = cls.new_empty(batch, cls.shape[-1], height, width)
    for i in range(batch):
        weights = cls[i].t()
        for top in range(0, height, band_rows):
            bottom = min(height, top + band_rows)
            first, last = max(0, top // factor - 1), min(rows, bottom // factor + 1)
            source = mask_logits[i:i + 1, :, first:last]
            resized = F.interpolate(source, size=((last - first) * factor, width),
                                    mode="bilinear", align_corners=False)
            band = resized[0, :, top - first * factor:bottom - first * factor].sigmoid_()
            torch.mm(weights, band.reshape(queries, -1),
                     out=out[i, :, top:bottom].view(-1, (bottom - top) * width))
    return out


class Mask2FormerHead(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        feat = cfg.feat_channels
        dec = cfg.decoder
        self.num_levels = cfg.num_transformer_feat_level
        self.pos_num_feats = dec.pos_num_feats
        self.pixel_decoder = MSDeformAttnPixelDecoder(cfg)
        self.transformer_decoder = TransformerDecoder(feat, dec.num_layers, dec.num_heads,
                                                      dec.ffn_channels)
        # Identity unless the official config forces a projection (no weights in that case).
        self.decoder_input_projs = nn.ModuleList([
            nn.Conv2d(feat, feat, 1) if cfg.enforce_decoder_input_project else nn.Identity()
            for _ in range(self.num_levels)
        ])
        self.query_embed = embedding(cfg.num_queries, feat)
        self.query_feat = embedding(cfg.num_queries, feat)
        self.level_embed = embedding(self.num_levels, feat)
        self.cls_embed = nn.Linear(feat, cfg.num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, feat),
                                        nn.ReLU(), nn.Linear(feat, cfg.out_channels))

    def forward(self, feats: list[torch.Tensor], all_predictions: bool = True) -> HeadOutput:
        """Every prediction set (deep supervision, inspection), or with ``all_predictions``
        False only the last one, so that inference does not keep the earlier mask maps."""
        mask_features, memories = self.pixel_decoder(feats)
        batch = mask_features.shape[0]
        keys, key_pos = [], []
        for i in range(self.num_levels):
            memory = self.decoder_input_projs[i](memories[i])
            keys.append(memory.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            encoding = sine_position_encoding(*memory.shape[-2:], self.pos_num_feats,
                                              memory.device)
            key_pos.append(encoding.flatten(2).transpose(1, 2))
        query = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)

        cls, mask, blocked = self._predict(query, mask_features, memories[0].shape[-2:])
        all_cls, all_masks = [cls], [mask]
        for i, layer in enumerate(self.transformer_decoder.layers):
            level = i % self.num_levels
            query = layer(query, query_pos, keys[level], key_pos[level], blocked)
            target = memories[(i + 1) % self.num_levels].shape[-2:]
            cls, mask, blocked = self._predict(query, mask_features, target)
            if not all_predictions:
                all_cls.clear()
                all_masks.clear()
            all_cls.append(cls)
            all_masks.append(mask)
        return HeadOutput(all_cls, all_masks, memories, mask_features)

    def _predict(self, query: torch.Tensor, mask_features: torch.Tensor,
                 target: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits, mask logits and the attention mask for the next level
        (True = blocked: the query's resized mask is below 0.5 there)."""
        query = self.transformer_decoder.post_norm(query)
        cls = self.cls_embed(query)
        mask = torch.einsum("bqc,bchw->bqhw", self.mask_embed(query), mask_features)
        resized = F.interpolate(mask, size=tuple(target), mode="bilinear", align_corners=False)
        blocked = resized.flatten(2).sigmoid() < 0.5
        # A query whose mask is empty at this level attends everywhere instead of nowhere.
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return cls, mask, blocked.unsqueeze(1)

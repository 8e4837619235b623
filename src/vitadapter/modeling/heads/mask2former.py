"""Mask2Former head for semantic segmentation: pixel decoder, masked-attention decoder and the
class x mask semantic inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config.schema import HeadConfig
from ...ops import Linear, fast_inference, linear, matmul_nt, onednn_applies, use_reference
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
    kernel rounds a pixel differently (its channels-last kernel here, vector or scalar code,
    by where its threads split the work, as the whole-map resize itself does with another
    thread count)."""
    batch, queries, rows, _ = mask_logits.shape
    height, width = size
    band_rows = max(1, _BAND_PIXELS // (width * factor)) * factor
    out = cls.new_empty(batch, cls.shape[-1], height, width)
    for i in range(batch):
        weights = cls[i].t().contiguous()
        for top in range(0, height, band_rows):
            bottom = min(height, top + band_rows)
            first, last = max(0, top // factor - 1), min(rows, bottom // factor + 1)
            # Channels-last: PyTorch's resize runs vectorised over the queries there, twice
            # as fast as on the (Q, h, w) planes; the product takes the (pixels, Q) band
            # transposed.
            source = mask_logits[i:i + 1, :, first:last].contiguous(
                memory_format=torch.channels_last)
            resized = F.interpolate(source, size=((last - first) * factor, width),
                                    mode="bilinear", align_corners=False)
            band = resized[0, :, top - first * factor:bottom - first * factor].sigmoid_()
            pixels = band.permute(1, 2, 0).reshape(-1, queries)
            scores = out[i, :, top:bottom].view(-1, (bottom - top) * width)
            if onednn_applies(pixels, weights):  # 1.7x MKL's rate at K = 100, even with the copy
                scores.copy_(linear(weights, pixels))
            else:
                torch.mm(weights, pixels.t(), out=scores)
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
        self.cls_embed = Linear(feat, cfg.num_classes + 1)
        self.mask_embed = nn.Sequential(Linear(feat, feat), nn.ReLU(), Linear(feat, feat),
                                        nn.ReLU(), Linear(feat, cfg.out_channels))

    def forward(self, feats: list[torch.Tensor], all_predictions: bool = True) -> HeadOutput:
        """Every prediction set (deep supervision, inspection), or with ``all_predictions``
        False only the last one, so that inference does not keep the earlier mask maps.

        Without ``all_predictions`` (and off the reference path) the earlier predictions serve
        only as attention masks, read at each level's size: those are computed from the mask
        features resized to that size instead of resizing full-size masks (the bilinear resize
        and the per-pixel product with the query's mask embedding are both linear and act on
        different axes, so they commute; at 512 a 64x64 level costs a quarter of the 128x128
        product, and no full-size mask is written)."""
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
        layers = self.transformer_decoder.layers
        targets = [tuple(memories[i % self.num_levels].shape[-2:])
                   for i in range(len(layers) + 1)]
        resized = {}  # the attention-only predictions' mask features at their level's size
        if not all_predictions and not use_reference():
            resized = {target: _bilinear_shrink(mask_features, target)
                       for target in set(targets[:-1])}

        cls, mask, blocked = self._predict(query, mask_features, targets[0],
                                           resized.get(targets[0]))
        all_cls, all_masks = [cls], [mask]
        for i, layer in enumerate(layers):
            level = i % self.num_levels
            query = layer(query, query_pos, keys[level], key_pos[level], blocked)
            target = targets[i + 1]
            at_target = None if i == len(layers) - 1 else resized.get(target)
            cls, mask, blocked = self._predict(query, mask_features, target, at_target)
            if not all_predictions:
                all_cls.clear()
                all_masks.clear()
            all_cls.append(cls)
            all_masks.append(mask)
        return HeadOutput(all_cls, all_masks, memories, mask_features)

    def _predict(self, query: torch.Tensor, mask_features: torch.Tensor,
                 target: tuple[int, ...], at_target: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits, mask logits and the attention mask for the next level
        (True = blocked: the query's resized mask is below 0.5 there). Given ``at_target``,
        the mask features already resized to ``target``, the mask logits are computed there
        (not at full size) and give the attention mask directly."""
        query = self.transformer_decoder.post_norm(query)
        cls = self.cls_embed(query)
        features = mask_features if at_target is None else at_target
        mask = matmul_nt(self.mask_embed(query), features.flatten(2).transpose(1, 2)).view(
            *query.shape[:2], *features.shape[-2:])
        if at_target is not None:
            return cls, mask, _blocked(mask)
        resized = F.interpolate(mask, size=target, mode="bilinear", align_corners=False)
        return cls, mask, _blocked(resized)


def _bilinear_shrink(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` where ``size`` divides
    the map's size: output pixel ``i`` then sits at source ``f * i + (f - 1) / 2`` (``f`` the
    factor), on a source pixel (odd ``f``) or halfway between two (even ``f``), so each axis is
    a strided pick or the mean of two (the same weights; the sums may round in another order).
    PyTorch's kernel first copies a many-channel map to channels-last: 9 ms for 256 x 128^2."""
    if x.shape[-2] % size[0] or x.shape[-1] % size[1]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    fh, fw = x.shape[-2] // size[0], x.shape[-1] // size[1]
    rows = x[..., (fh - 1) // 2::fh, :], x[..., fh // 2::fh, :]  # one row for odd factors
    x = rows[0] if fh % 2 else (rows[0] + rows[1]) * 0.5
    cols = x[..., (fw - 1) // 2::fw], x[..., fw // 2::fw]
    return cols[0] if fw % 2 else (cols[0] + cols[1]) * 0.5


def _blocked(mask: torch.Tensor) -> torch.Tensor:
    """The attention mask of mask logits at a level's size: True (blocked) where the sigmoid is
    below 0.5; a query whose mask is empty at this level attends everywhere instead of
    nowhere."""
    blocked = mask.flatten(2).sigmoid() < 0.5
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.unsqueeze(1)

"""The whole network on one normalised crop: backbone, head, semantic scores."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import nn

from ..config.schema import ModelConfig, UperNetConfig
from ..errors import CheckpointError
from .adapter import ViTAdapter
from .backbones.beit import INDEX_KEY, relative_position_index
from .heads.mask2former import HeadOutput, Mask2FormerHead, crop_scores, semantic_scores
from .heads.upernet import FCNHead, UperNetHead, UperNetOutput

logger = logging.getLogger(__name__)

# Keys of old Mask2Former releases that the model does not use (UperNet's conv_seg is real).
_UNUSED_PREFIXES = ("decode_head.conv_seg.",)
_MASK2FORMER_PREFIX = "decode_head.pixel_decoder."
AUXILIARY_PREFIX = "auxiliary_head."
# Meta's DINOv3 segmentor: segmentation_model.0 = DINOv3_Adapter (its ViT under .backbone),
# segmentation_model.1 = Mask2FormerHead. The adapter's names are ours; the head's (detectron2's
# Mask2Former) map to ours by these rules, applied in order to the key after the prefix.
META_PREFIX = "segmentation_model."
_META_HEAD = [(re.compile(pattern), ours) for pattern, ours in (
    (r"^pixel_decoder\.input_convs\.(\d+)\.0\.", r"pixel_decoder.input_convs.\1.conv."),
    (r"^pixel_decoder\.input_convs\.(\d+)\.1\.", r"pixel_decoder.input_convs.\1.gn."),
    (r"^pixel_decoder\.encoder\.level_encoding$", "pixel_decoder.level_encoding.weight"),
    (r"^pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.self_attn\.",
     r"pixel_decoder.encoder.layers.\1.attentions.0."),
    (r"^pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.norm(\d)\.",
     lambda m: f"pixel_decoder.encoder.layers.{m[1]}.norms.{int(m[2]) - 1}."),
    (r"^pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.linear1\.",
     r"pixel_decoder.encoder.layers.\1.ffns.0.layers.0.0."),
    (r"^pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.linear2\.",
     r"pixel_decoder.encoder.layers.\1.ffns.0.layers.1."),
    (r"^pixel_decoder\.(lateral|output)_convs\.(\d+)\.norm\.", r"pixel_decoder.\1_convs.\2.gn."),
    (r"^pixel_decoder\.(lateral|output)_convs\.(\d+)\.(weight|bias)$",
     r"pixel_decoder.\1_convs.\2.conv.\3"),
    (r"^predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
     r"transformer_decoder.layers.\1.attentions.0.attn."),
    (r"^predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.",
     r"transformer_decoder.layers.\1.norms.0."),
    (r"^predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.",
     r"transformer_decoder.layers.\1.attentions.1.attn."),
    (r"^predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
     r"transformer_decoder.layers.\1.norms.1."),
    (r"^predictor\.transformer_ffn_layers\.(\d+)\.linear1\.",
     r"transformer_decoder.layers.\1.ffns.0.layers.0.0."),
    (r"^predictor\.transformer_ffn_layers\.(\d+)\.linear2\.",
     r"transformer_decoder.layers.\1.ffns.0.layers.1."),
    (r"^predictor\.transformer_ffn_layers\.(\d+)\.norm\.",
     r"transformer_decoder.layers.\1.norms.2."),
    (r"^predictor\.post_norm\.", "transformer_decoder.post_norm."),
    (r"^predictor\.class_embed\.", "cls_embed."),
    (r"^predictor\.mask_embed\.layers\.(\d)\.", lambda m: f"mask_embed.{2 * int(m[1])}."),
    (r"^predictor\.(query_feat|query_embed|level_embed)\.", r"\1."),
)]


class GradCheckpointing(Protocol):
    """A module that can recompute its activations in backward: its class declares
    ``with_cp = False`` and its forward goes through :func:`~.layers.maybe_checkpoint`."""

    with_cp: bool


@dataclass
class SegmentorOutput:
    """Intermediate results of one forward pass, for inspection and parity checks."""

    features: list[torch.Tensor]  # backbone maps at 1/4, 1/8, 1/16, 1/32
    head: HeadOutput | UperNetOutput
    scores: torch.Tensor          # (B, num_classes, H/4, W/4), or (H, W): Meta's pipeline


class SegmentationModel(nn.Module):
    """ViT-Adapter + Mask2Former (the official ``EncoderDecoderMask2Former``) or + UperNet
    (``EncoderDecoder`` with ``UPerHead`` and the auxiliary ``FCNHead``).

    ``forward`` maps a normalised crop (B, 3, S, S), S = the test crop size, to per-class
    scores (B, num_classes, S/4, S/4): Mask2Former's class x mask scores, UperNet's logits.
    With Meta's DINOv3 pipeline (``inference.pipeline == "dinov3"``) crops of any sides that
    are multiples of 32 give scores at the crop's own size (:func:`crop_scores`). ``inspect``
    also returns the backbone features and the head's intermediate results. The
    auxiliary head (``auxiliary_head``, when configured) is for training only.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Class names and palette of the loaded checkpoint's ``meta``, when it has them.
        self.classes: list[str] | None = None
        self.palette: list[list[int]] | None = None
        self.backbone = ViTAdapter(config.backbone, config.behaviour)
        self.decode_head: Mask2FormerHead | UperNetHead
        self.auxiliary_head: FCNHead | None = None
        head = config.head
        if isinstance(head, UperNetConfig):
            self.decode_head = UperNetHead(head)
            if head.auxiliary is not None:
                self.auxiliary_head = FCNHead(head.auxiliary)
        else:
            self.decode_head = Mask2FormerHead(head)

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Gradient checkpointing in training (as timm's models): every submodule whose class
        declares a ``with_cp`` flag (the ViT blocks of every backbone, the adapter's injectors
        and extractors) recomputes its activations in backward; returns how many were set."""
        switched = 0
        for module in self.modules():
            if isinstance(getattr(type(module), "with_cp", None), bool):
                cast(GradCheckpointing, module).with_cp = enable
                switched += 1
        return switched

    @property
    def crop_size(self) -> int:
        return self.config.inference.crop_size[0]

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        self._check_input(crop)
        if isinstance(self.decode_head, UperNetHead):
            return self.decode_head(self.backbone(crop)).logits
        head = self.decode_head(self.backbone(crop), all_predictions=False)
        return self.crop_scores(head, crop)

    def inspect(self, crop: torch.Tensor) -> SegmentorOutput:
        self._check_input(crop)
        features = self.backbone(crop)
        if isinstance(self.decode_head, UperNetHead):
            upernet = self.decode_head(features)
            return SegmentorOutput(features, upernet, upernet.logits)
        head = self.decode_head(features)
        return SegmentorOutput(features, head, self.crop_scores(head, crop))

    def crop_scores(self, head: HeadOutput, crop: torch.Tensor) -> torch.Tensor:
        """Mask2Former's class x mask scores of the last prediction: at 1/4 of the crop (the
        official pipeline), or at the crop's own size with the masks upsampled first (Meta's
        DINOv3 pipeline, in its einsum dtype)."""
        inference = self.config.inference
        if inference.pipeline == "dinov3":
            dtype = torch.bfloat16 if inference.einsum_dtype == "bf16" else torch.float32
            return crop_scores(head.cls_logits[-1], head.mask_logits[-1],
                               tuple(crop.shape[-2:]), dtype)
        return semantic_scores(head.cls_logits[-1], head.mask_logits[-1])

    def _check_input(self, crop: torch.Tensor) -> None:
        size = self.crop_size
        if crop.dim() != 4 or crop.shape[1] != self.config.backbone.in_channels:
            raise ValueError(f"expected a (B, {self.config.backbone.in_channels}, {size}, {size})"
                             f" normalised crop, got shape {tuple(crop.shape)}")
        if self.config.backbone.kind == "dinov3":  # RoPE: any size the adapter's 1/32 takes
            if crop.shape[-2] % 32 or crop.shape[-1] % 32 or min(crop.shape[-2:]) < 32:
                raise ValueError(f"this model takes crops whose sides are multiples of 32, got "
                                 f"{crop.shape[-2]}x{crop.shape[-1]}")
        elif tuple(crop.shape[-2:]) != (size, size):
            raise ValueError(
                f"this model takes {size}x{size} crops (its configured test crop), got "
                f"{crop.shape[-2]}x{crop.shape[-1]}; use the Segmenter, which resizes, pads "
                "and slides windows for any image size")


def checkpoint_filter(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                      ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The one place of key surgery between a checkpoint and :class:`SegmentationModel`.

    Strips DataParallel's ``module.``; renames Meta's DINOv3 segmentor keys
    (``segmentation_model.0.*`` / ``.1.*``, :func:`meta_key`); drops the
    ``relative_position_index`` buffers (derived from the window, so they are checked against
    it, never loaded) and the unused ``decode_head.conv_seg.*`` of old Mask2Former releases
    (with a notice). The auxiliary
    FCNHead of UperNet checkpoints (``auxiliary_head.*``, :data:`AUXILIARY_PREFIX`) is kept:
    it loads into the model's training-only ``auxiliary_head``. Returns the tensors to load and
    the unused keys that were dropped.
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = meta_key(key.removeprefix("module."))
        if key.endswith("." + INDEX_KEY):
            _check_index(key, value, source)
        else:
            tensors[key] = value
    mask2former = any(k.startswith(_MASK2FORMER_PREFIX) for k in tensors)
    unused = sorted(k for k in tensors if mask2former and k.startswith(_UNUSED_PREFIXES))
    if unused:
        logger.info("%s: ignoring %d unused key(s) of old releases: %s", source, len(unused),
                    ", ".join(unused))
        for key in unused:
            del tensors[key]
    return tensors, unused


def meta_key(key: str) -> str:
    """Our name for a key of Meta's DINOv3 segmentor (other keys are returned unchanged)."""
    if not key.startswith(META_PREFIX):
        return key
    rest = key[len(META_PREFIX):]
    if rest.startswith("0."):
        return "backbone." + rest[2:].removeprefix("backbone.")
    if not rest.startswith("1."):
        return key
    rest = rest[2:]
    for pattern, ours in _META_HEAD:
        renamed, count = pattern.subn(ours, rest)
        if count:
            return "decode_head." + renamed
    return "decode_head." + rest


def _check_index(key: str, index: torch.Tensor, source: str) -> None:
    if index.is_meta:
        return
    side = math.isqrt(max(index.shape[0] - 1, 0))
    window = (side, side)
    if index.dim() != 2 or not torch.equal(index.cpu(), relative_position_index(window)):
        raise CheckpointError(f"{source}: {key} differs from the index of a {window} window")

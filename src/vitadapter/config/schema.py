"""Typed configuration of the model family and its test-time pipeline.

Every hyperparameter of a BEiT-Adapter + Mask2Former model lives in one of the frozen dataclasses
below, with the cross-field checks the architecture relies on. This module imports nothing of
the project but its errors: presets (:mod:`.presets`) are instances of :class:`ModelConfig`, and
the readers of config files live in :mod:`.parse` (our JSON) and :mod:`.mmcv` (official configs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..errors import ConfigError

Behaviour = Literal["official", "modelscope"]
BEHAVIOURS: tuple[str, ...] = get_args(Behaviour)
# Numeric precision of the PyTorch backend (see vitadapter.backends.precision).
Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class BackboneConfig:
    """BEiT ViT with the ViT-Adapter (spatial prior, injectors, extractors)."""

    img_size: int = 896
    patch_size: int = 16
    in_channels: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos_bias: bool = True
    # Layer-scale init value; None or 0 means the blocks have no gamma_1/gamma_2.
    init_values: float | None = 1e-6
    norm_eps: float = 1e-6
    conv_inplane: int = 64
    n_points: int = 4
    deform_num_heads: int = 16
    cffn_ratio: float = 0.25
    deform_ratio: float = 0.5
    with_cffn: bool = True
    add_vit_feature: bool = True
    use_extra_extractor: bool = True
    interaction_indexes: tuple[tuple[int, int], ...] = ((0, 5), (6, 11), (12, 17), (18, 23))

    @property
    def window_size(self) -> tuple[int, int]:
        """Token grid of one crop; the relative position tables are sized for it."""
        side = self.img_size // self.patch_size
        return side, side


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Mask2Former's multi-scale deformable-attention pixel decoder."""

    num_layers: int = 6
    num_heads: int = 32
    num_levels: int = 3
    num_points: int = 4
    ffn_channels: int = 4096
    num_groups: int = 32
    pos_num_feats: int = 512
    strides: tuple[int, ...] = (4, 8, 16, 32)


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Mask2Former's masked-attention transformer decoder."""

    num_layers: int = 9
    num_heads: int = 32
    ffn_channels: int = 4096
    pos_num_feats: int = 512


@dataclass(frozen=True)
class HeadConfig:
    """Mask2Former semantic-segmentation head."""

    in_channels: tuple[int, ...] = (1024, 1024, 1024, 1024)
    feat_channels: int = 1024
    out_channels: int = 1024
    num_things_classes: int = 80
    num_stuff_classes: int = 91
    num_queries: int = 200
    num_transformer_feat_level: int = 3
    enforce_decoder_input_project: bool = False
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)

    @property
    def num_classes(self) -> int:
        return self.num_things_classes + self.num_stuff_classes


@dataclass(frozen=True)
class InferenceConfig:
    """Test-time pipeline: keep-ratio resize, resize to a multiple, normalise, slide windows."""

    # (long side cap, short side target), as mmcv's img_scale=(3584, 896).
    img_scale: tuple[int, int] = (3584, 896)
    size_divisor: int = 32
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    crop_size: tuple[int, int] = (896, 896)
    stride: tuple[int, int] = (512, 512)
    # Multi-scale + flip test-time augmentation of the official *_ms configs (off by default).
    tta_ratios: tuple[float, ...] = (640 / 896, 768 / 896, 1.0)
    tta_flip: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """A complete model: architecture, test pipeline, behaviour switch and provenance."""

    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # "official": Injector x + gamma*MSDA, Extractor c + MSDA (czczup/ViT-Adapter).
    # "modelscope": both also add the normalised query back (ModelScope's mmcv identity quirk).
    behaviour: Behaviour = "official"
    dataset: str = "coco-stuff164k"
    weights_url: str | None = None
    weights_sha256: str | None = None  # of the file at weights_url, where known
    description: str = ""

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ConfigError(
                f"behaviour must be one of {', '.join(BEHAVIOURS)}, got {self.behaviour!r}"
            )
        validate(self)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some top-level fields changed (e.g. ``behaviour="modelscope"``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: ModelConfig) -> None:
    """Check the cross-field constraints the architecture relies on."""
    b, h = cfg.backbone, cfg.head
    if b.img_size % 32 or b.patch_size != 16:
        raise ConfigError(
            f"backbone.img_size must be a multiple of 32 with patch_size 16 "
            f"(got img_size={b.img_size}, patch_size={b.patch_size})"
        )
    inf = cfg.inference
    if (min(inf.stride) < 1 or inf.size_divisor < 1 or min(inf.img_scale) < 1
            or min(abs(v) for v in inf.std) == 0):
        raise ConfigError(f"inference: stride {tuple(inf.stride)}, size_divisor "
                          f"{inf.size_divisor} and img_scale {tuple(inf.img_scale)} must be "
                          f"positive and std {tuple(inf.std)} non-zero")
    if tuple(cfg.inference.crop_size) != (b.img_size, b.img_size):
        raise ConfigError(
            f"test crop_size {tuple(cfg.inference.crop_size)} must equal the backbone img_size "
            f"({b.img_size}): the relative position tables are sized for one crop"
        )
    if b.embed_dim % b.num_heads or b.embed_dim % b.deform_num_heads:
        raise ConfigError("backbone.embed_dim must be divisible by num_heads and deform_num_heads")
    value_dim = int(b.embed_dim * b.deform_ratio)
    if value_dim % b.deform_num_heads:
        raise ConfigError("backbone.embed_dim * deform_ratio must be divisible by deform_num_heads")
    last = -1
    for start, end in b.interaction_indexes:
        if start != last + 1 or end < start:
            raise ConfigError(
                f"backbone.interaction_indexes must cover the blocks in order, got "
                f"{[list(p) for p in b.interaction_indexes]}"
            )
        last = end
    if last != b.depth - 1:
        raise ConfigError(
            f"backbone.interaction_indexes end at block {last} but depth is {b.depth}"
        )
    if len(h.in_channels) != 4 or any(c != b.embed_dim for c in h.in_channels):
        raise ConfigError(
            f"decode_head.in_channels must be four times the backbone embed_dim ({b.embed_dim}), "
            f"got {list(h.in_channels)}"
        )
    if h.num_transformer_feat_level != h.pixel_decoder.num_levels:
        raise ConfigError(
            "decode_head.num_transformer_feat_level must equal the pixel decoder's num_levels"
        )
    if not 1 <= h.pixel_decoder.num_levels < len(h.in_channels):
        raise ConfigError("pixel decoder num_levels must leave at least one level for the FPN")
    if h.feat_channels % h.pixel_decoder.num_groups:
        raise ConfigError("decode_head.feat_channels must be divisible by the GroupNorm groups")
    if 2 * h.pixel_decoder.pos_num_feats != h.feat_channels:
        raise ConfigError(
            "pixel_decoder.positional_encoding.num_feats must be half of feat_channels"
        )
    if h.feat_channels % h.pixel_decoder.num_heads or h.feat_channels % h.decoder.num_heads:
        raise ConfigError("decode_head.feat_channels must be divisible by the attention heads")
    if len(h.pixel_decoder.strides) != len(h.in_channels):
        raise ConfigError("pixel decoder strides must give one stride per input level")

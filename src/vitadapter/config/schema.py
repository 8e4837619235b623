"""Typed configuration of the model family and its test-time pipeline.

Every hyperparameter of a ViT-Adapter segmentation model lives in one of the frozen dataclasses
below, with the cross-field checks the architecture relies on. The backbone's ``kind`` says which
ViT the adapter wraps (BEiT or a plain DeiT/AugReg ViT); the head is a :class:`HeadConfig`
(Mask2Former) or an :class:`UperNetConfig`, told apart by their ``kind`` field. This module
imports nothing of the project but its errors: presets (:mod:`.presets`) are instances of
:class:`ModelConfig`, and the readers of config files live in :mod:`.parse` (our JSON) and
:mod:`.mmcv` (official configs).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError

Behaviour = Literal["official", "modelscope"]
BEHAVIOURS: tuple[str, ...] = get_args(Behaviour)
# Numeric precision of the PyTorch backend (see vitadapter.backends.precision).
Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# "beit": BEiT blocks (q/v bias, relative position bias, cls token in the interactions);
# "vit": timm-style plain ViT (fused qkv bias, absolute pos_embed, no cls token);
# "dinov3": Meta's DINOv3 ViT (axial RoPE, cls + storage tokens, masked k bias, final norm on
# the tapped layers).
BackboneKind = Literal["beit", "vit", "dinov3"]
BACKBONE_KINDS: tuple[str, ...] = get_args(BackboneKind)
# The DINOv3 feed-forward layers: fc1 -> GELU -> fc2, or SwiGLU (w1, w2, w3).
FfnLayer = Literal["mlp", "swiglu"]
HeadKind = Literal["mask2former", "upernet"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)
# The test pipeline around the crop runner: "mmseg" (the official ViT-Adapter / mmseg one) or
# "dinov3" (Meta's DINOv3 segmentation evaluation; see InferenceConfig).
Pipeline = Literal["mmseg", "dinov3"]
# dtype of the dinov3 pipeline's per-crop class x mask einsum: "fp32" (exact) or "bf16" (the
# cast Meta's slide_inference makes on every device).
EinsumDtype = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class BackboneConfig:
    """A ViT (``kind``: BEiT, plain or DINOv3) with the ViT-Adapter (spatial prior, injectors
    when ``with_injector``, extractors)."""

    kind: BackboneKind = "beit"
    # BEiT: the crop its relative position tables are sized for. Plain ViT: the pretraining
    # size, whose img_size/16 grid the absolute pos_embed was learned on (resized per input).
    # DINOv3: the pretraining size, unused (RoPE works at any size).
    img_size: int = 896
    patch_size: int = 16
    in_channels: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos_bias: bool = True
    # Layer-scale init value (BEiT blocks and the injectors); None or 0 means the BEiT blocks
    # have no gamma_1/gamma_2.
    init_values: float | None = 1e-6
    # Plain ViT only: whether the blocks have layer scale (gamma1/gamma2).
    layer_scale: bool = True
    # LayerNorm eps of the ViT blocks (and of the adapter unless adapter_norm_eps is given).
    norm_eps: float = 1e-6
    adapter_norm_eps: float | None = None
    # The official ViT-Adapter injects the spatial prior into the ViT before each run of
    # blocks; Meta's DINOv3_Adapter only extracts (the ViT runs unchanged).
    with_injector: bool = True
    # DINOv3 only: register ("storage") tokens after the cls token, the FFN kind (SwiGLU's
    # hidden width int(2/3 * mlp_ratio * dim) rounded up to ffn_align), axial RoPE with periods
    # rope_base ** (2i / (head_dim / 2)) and, in training with the ViT not frozen, coordinates
    # rescaled by a log-uniform factor in [1/r, r]; the k third of the qkv bias masked to zero;
    # an unused local_cls_norm (the 7B and ViT-L SAT checkpoints hold one).
    n_storage_tokens: int = 0
    ffn_layer: FfnLayer = "mlp"
    ffn_align: int = 8
    rope_base: float = 100.0
    rope_rescale_coords: float | None = None
    mask_k_bias: bool = False
    untie_global_and_local_cls_norm: bool = False
    conv_inplane: int = 64
    n_points: int = 4
    deform_num_heads: int = 16
    cffn_ratio: float = 0.25
    deform_ratio: float = 0.5
    with_cffn: bool = True
    add_vit_feature: bool = True
    use_extra_extractor: bool = True
    interaction_indexes: tuple[tuple[int, int], ...] = ((0, 5), (6, 11), (12, 17), (18, 23))
    # Stochastic depth in training (official recipe 0.3): block i drops its residual branches
    # with rate drop_path_rate * i / (depth - 1), the extractors' ConvFFN with drop_path_rate.
    # No effect in eval mode.
    drop_path_rate: float = 0.0

    @property
    def adapter_eps(self) -> float:
        """LayerNorm eps of the adapter's injectors and extractors."""
        return self.norm_eps if self.adapter_norm_eps is None else self.adapter_norm_eps

    @property
    def taps(self) -> tuple[int, ...]:
        """The block whose output each interaction extracts from (the last of its run)."""
        return tuple(last for _, last in self.interaction_indexes)

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
    # Run in float32 even under autocast, as Meta's DINOv3 pixel decoder does (its bf16
    # precision mode: bf16 backbone, adapter and transformer decoder, float32 pixel decoder).
    float32: bool = False


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

    kind: Literal["mask2former"] = "mask2former"
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
class AuxiliaryHeadConfig:
    """mmseg's FCNHead on one backbone level: a training-only auxiliary loss (in the released
    UperNet checkpoints, unused at inference)."""

    in_channels: int = 1024
    channels: int = 256
    in_index: int = 2
    num_convs: int = 1
    concat_input: bool = False
    num_classes: int = 150
    dropout_ratio: float = 0.1
    loss_weight: float = 0.4


@dataclass(frozen=True)
class UperNetConfig:
    """mmseg 0.x UPerHead: pyramid pooling on the last level, FPN, fused bottleneck, logits at
    1/4; with the auxiliary FCNHead of the released checkpoints."""

    kind: Literal["upernet"] = "upernet"
    in_channels: tuple[int, ...] = (1024, 1024, 1024, 1024)
    channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    num_classes: int = 150
    dropout_ratio: float = 0.1
    auxiliary: AuxiliaryHeadConfig | None = field(default_factory=AuxiliaryHeadConfig)


@dataclass(frozen=True)
class InferenceConfig:
    """Test-time pipeline: resize, normalise, slide windows, merge.

    ``pipeline="mmseg"`` (default): the official one: keep-ratio resize within ``img_scale``,
    resize to a multiple of ``size_divisor``, pad to the crop, windows of 1/4-resolution scores.
    ``pipeline="dinov3"``: Meta's DINOv3 evaluation: short side to ``short_side`` (PIL
    bilinear), no padding, TTA short sides ``int(short_side * r)`` rounded up to a multiple of
    ``size_divisor`` for r < 1, windows pushed inside the image (a crop larger than the image in
    both dimensions shrinks to a square of the shorter side), crop scores at the crop's size.
    """

    pipeline: Pipeline = "mmseg"
    # mmseg: (long side cap, short side target), as mmcv's img_scale=(3584, 896).
    img_scale: tuple[int, int] = (3584, 896)
    # mmseg: ResizeToMultiple's divisor. dinov3: the multiple TTA short sides below ratio 1 are
    # rounded up to (Meta: 32, not scaled with the crop).
    size_divisor: int = 32
    # dinov3 only (required there): the single-scale short side (Meta's transforms.eval.img_size).
    short_side: int | None = None
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    crop_size: tuple[int, int] = (896, 896)
    stride: tuple[int, int] = (512, 512)
    # Multi-scale + flip test-time augmentation (off by default): mmseg's *_ms scales, or
    # Meta's ratios of the short side.
    tta_ratios: tuple[float, ...] = (640 / 896, 768 / 896, 1.0)
    tta_flip: bool = True
    # dinov3 only: dtype of the per-crop class x mask einsum; "bf16" is Meta's own cast.
    einsum_dtype: EinsumDtype = "fp32"


@dataclass(frozen=True)
class ModelConfig:
    """A complete model: architecture, test pipeline, behaviour switch and provenance."""

    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig | UperNetConfig = field(default_factory=HeadConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # "official": Injector x + gamma*MSDA, Extractor c + MSDA (czczup/ViT-Adapter).
    # "modelscope": both also add the normalised query back (ModelScope's mmcv identity quirk).
    behaviour: Behaviour = "official"
    dataset: str = "coco-stuff164k"
    weights_url: str | None = None
    weights_sha256: str | None = None  # of the file at weights_url, where known
    # Weights distributed as a head file (weights_url) and a backbone file of their own.
    backbone_weights_url: str | None = None
    # Where the weights are requested when their download is gated (Meta's DINOv3 form).
    weights_access: str | None = None
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

    def with_num_classes(self, num_classes: int) -> ModelConfig:
        """A copy predicting ``num_classes`` classes (for fine-tuning on other classes)."""
        head: HeadConfig | UperNetConfig
        if isinstance(self.head, UperNetConfig):
            aux = self.head.auxiliary
            head = dataclasses.replace(
                self.head, num_classes=num_classes,
                auxiliary=None if aux is None else dataclasses.replace(aux,
                                                                      num_classes=num_classes))
        else:
            head = dataclasses.replace(self.head, num_things_classes=num_classes,
                                       num_stuff_classes=0)
        return self.replace(head=head)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: ModelConfig) -> None:
    """Check every field's type and range (:func:`check_fields`), then the cross-field
    constraints the architecture relies on."""
    for name in ("backbone", "head", "inference"):
        check_fields(getattr(cfg, name), name)
    _validate_pipeline(cfg.inference, cfg.head)
    _validate_backbone(cfg.backbone, cfg.inference)
    h = cfg.head
    if len(h.in_channels) != 4 or any(c != cfg.backbone.embed_dim for c in h.in_channels):
        raise ConfigError(
            f"decode_head.in_channels must be four times the backbone embed_dim "
            f"({cfg.backbone.embed_dim}), got {list(h.in_channels)}"
        )
    if isinstance(h, UperNetConfig):
        _validate_upernet(h, cfg.backbone)
    else:
        _validate_mask2former(h)


# Sizes and counts that must be at least 1 (other integers may be 0, none negative), floats
# that must be positive (others only finite), and the largest crop a ViT here can take (its
# token grid and relative position tables grow with the square of it).
_AT_LEAST_ONE = frozenset({
    "img_size", "patch_size", "in_channels", "embed_dim", "depth", "num_heads", "conv_inplane",
    "n_points", "deform_num_heads", "num_layers", "num_levels", "num_points", "ffn_channels",
    "num_groups", "pos_num_feats", "feat_channels", "out_channels", "num_queries", "channels",
    "num_transformer_feat_level", "size_divisor", "strides", "pool_scales", "img_scale",
    "crop_size", "stride"})
_POSITIVE = frozenset({"mlp_ratio", "cffn_ratio", "deform_ratio", "norm_eps", "std",
                       "tta_ratios"})
_MAX_INT = 2**16
MAX_CROP = 4096


def check_fields(obj: Any, where: str) -> None:
    """Refuse a field of the config dataclass ``obj`` (and of those inside it) whose value does
    not have its annotated type (``"64"`` for an int, ``[1.0]`` for three floats, NaN or inf
    for a float, a bool for a number) or lies out of range, naming the field."""
    hints = get_type_hints(type(obj))
    for fld in dataclasses.fields(obj):
        path = f"{where}.{fld.name}"
        value = getattr(obj, fld.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, path)
            continue
        problem = _type_problem(value, hints[fld.name])
        if problem is None:
            problem = _range_problem(fld.name, value)
        if problem is not None:
            raise ConfigError(f"'{path}' {problem}, got {value!r}"[:300])


def _type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` lacks to be of type ``hint`` (None when it is)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return None if value in args else "must be one of " + ", ".join(map(repr, args))
    if origin in (Union, UnionType):
        problems = [_type_problem(value, arg) for arg in args]
        return None if None in problems else " or ".join(p for p in problems if p)
    if hint is type(None):
        return None if value is None else "must be null"
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return "must be a list"
        items = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        if len(items) != len(value):
            return f"must be a list of {len(items)} values"
        inner = [_type_problem(v, t) for v, t in zip(value, items, strict=True)]
        return next((f"item {i} {p}" for i, p in enumerate(inner) if p), None)
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            "must be an integer"
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    return None


def _range_problem(name: str, value: Any) -> str | None:
    values = value if isinstance(value, tuple | list) else (value,)
    numbers = [v for v in _flat(values) if isinstance(v, int | float)
               and not isinstance(v, bool)]
    if name in _POSITIVE and any(v <= 0 for v in numbers):
        return "must be positive"
    if name in _AT_LEAST_ONE and any(v < 1 for v in numbers):
        return "must be at least 1"
    if any(v < 0 for v in numbers) and name != "mean":
        return "must not be negative"
    if any(isinstance(v, int) and v > _MAX_INT for v in numbers):
        return f"is larger than {_MAX_INT}"
    if name in ("img_size", "crop_size") and any(v > MAX_CROP for v in numbers):
        return f"is larger than {MAX_CROP} pixels, more than a ViT crop can be"
    return None


def _flat(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, tuple | list) else [v])
    return out


def _validate_backbone(b: BackboneConfig, inference: InferenceConfig) -> None:
    if b.img_size % 16 or b.patch_size != 16:
        raise ConfigError(
            f"backbone.img_size must be a multiple of 16 with patch_size 16 "
            f"(got img_size={b.img_size}, patch_size={b.patch_size})"
        )
    crop = tuple(inference.crop_size)
    if b.kind == "beit" and crop != (b.img_size, b.img_size):
        raise ConfigError(
            f"test crop_size {crop} must equal the backbone img_size "
            f"({b.img_size}): the relative position tables are sized for one crop"
        )
    if not 0 <= b.drop_path_rate < 1:
        raise ConfigError(f"backbone.drop_path_rate must be in [0, 1), got {b.drop_path_rate}")
    if crop[0] != crop[1] or crop[0] % 32:
        raise ConfigError(f"test crop_size must be square and a multiple of 32, got {crop}")
    if b.kind != "beit" and b.use_rel_pos_bias:
        raise ConfigError(f"a {b.kind} backbone has no relative position bias: set "
                          "backbone.use_rel_pos_bias to false")
    _validate_dinov3_fields(b)
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


def _validate_dinov3_fields(b: BackboneConfig) -> None:
    if b.kind != "dinov3":
        defaults = BackboneConfig()
        changed = [name for name in _DINOV3_ONLY if getattr(b, name) != getattr(defaults, name)]
        if changed:
            raise ConfigError(f"backbone.{changed[0]} applies to DINOv3 backbones only (kind "
                              f"'dinov3'); this backbone is kind {b.kind!r}")
        return
    if b.embed_dim % (4 * b.num_heads):
        raise ConfigError("a DINOv3 backbone's head width must be a multiple of 4 (axial RoPE: "
                          f"embed_dim {b.embed_dim} / {b.num_heads} heads)")
    if b.n_storage_tokens < 0 or b.ffn_align < 1 or not b.rope_base > 0:
        raise ConfigError("backbone.n_storage_tokens must be >= 0, ffn_align >= 1 and "
                          "rope_base > 0")
    if b.rope_rescale_coords is not None and not b.rope_rescale_coords >= 1:
        raise ConfigError("backbone.rope_rescale_coords must be >= 1 (or null)")


# BackboneConfig fields that only a DINOv3 backbone reads.
_DINOV3_ONLY = ("n_storage_tokens", "ffn_layer", "ffn_align", "rope_base",
                "rope_rescale_coords", "mask_k_bias", "untie_global_and_local_cls_norm")


def _validate_pipeline(inf: InferenceConfig, head: HeadConfig | UperNetConfig) -> None:
    if not inf.tta_ratios:
        raise ConfigError("inference.tta_ratios must hold at least one ratio")
    if inf.pipeline == "mmseg":
        if inf.short_side is not None or inf.einsum_dtype != "fp32":
            raise ConfigError("inference.short_side and inference.einsum_dtype belong to the "
                              "dinov3 pipeline: set inference.pipeline to 'dinov3' or drop them")
        return
    if isinstance(head, UperNetConfig):
        raise ConfigError("the dinov3 pipeline combines Mask2Former class and mask scores per "
                          "crop: a UperNet head needs inference.pipeline 'mmseg'")
    if isinstance(inf.short_side, bool) or not isinstance(inf.short_side, int) \
            or inf.short_side < 1:
        raise ConfigError("the dinov3 pipeline needs inference.short_side, the short side of "
                          f"the single-scale view (Meta's img_size), got {inf.short_side!r}")
    if not inf.to_rgb:
        raise ConfigError("the dinov3 pipeline normalises RGB images (Meta's transforms): "
                          "inference.to_rgb must be true")


def _validate_upernet(h: UperNetConfig, b: BackboneConfig) -> None:
    if not h.pool_scales or any(s < 1 for s in h.pool_scales):
        raise ConfigError(f"decode_head.pool_scales must be positive, got {list(h.pool_scales)}")
    if h.num_classes < 1:
        raise ConfigError("decode_head.num_classes must be at least 1")
    aux = h.auxiliary
    if aux is None:
        return
    if not 0 <= aux.in_index < len(h.in_channels) or aux.in_channels != b.embed_dim:
        raise ConfigError(
            f"auxiliary_head must read one backbone level of {b.embed_dim} channels "
            f"(in_index 0..{len(h.in_channels) - 1}), got in_index={aux.in_index}, "
            f"in_channels={aux.in_channels}"
        )
    if aux.num_classes != h.num_classes:
        raise ConfigError(f"auxiliary_head.num_classes ({aux.num_classes}) must equal "
                          f"decode_head.num_classes ({h.num_classes})")
    if aux.num_convs < 0 or (aux.num_convs == 0 and aux.channels != aux.in_channels):
        raise ConfigError("auxiliary_head with num_convs 0 needs channels == in_channels")


def _validate_mask2former(h: HeadConfig) -> None:
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

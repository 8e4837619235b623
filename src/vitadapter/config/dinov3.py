"""Meta's DINOv3 segmentor as configurations: its hub backbones, the test pipeline of its
ADE20K Mask2Former evaluation (``config-ade20k-m2f-inference.yaml``), and a segmentor described
by Meta's constructor arguments.

The layout is that of a ``config.json`` recording how Meta's code built the segmentor (the
reference sets of this project use it): ``backbone.args`` (the keyword arguments of
``dinov3.hub.backbones._make_dinov3_vit``), ``adapter`` (``DINOv3_Adapter``'s defaults, the
arguments passed and the tapped layers), ``head`` (``Mask2FormerHead`` with its pixel decoder and
predictor arguments) and ``pipeline`` (Meta's test pipeline). Every value this implementation
does not reproduce is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .fields import FieldReader
from .schema import (
    BackboneConfig,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    PixelDecoderConfig,
    TransformerDecoderConfig,
)

# Meta's norm_layer names and their LayerNorm eps; ffn_layer names and their SwiGLU alignment.
_NORM_EPS = {"layernormbf16": 1e-5, "layernorm": 1e-6}
_FFN_LAYERS = {"mlp": ("mlp", 8), "swiglu": ("swiglu", 8), "swiglu32": ("swiglu", 32),
               "swiglu64": ("swiglu", 64), "swiglu128": ("swiglu", 128)}
# Keys of such a file that describe how it was made, not the model.
_PROVENANCE = ("set", "produced_by", "environment", "seed", "input", "patched_constants",
               "randomisation", "files", "statistics", "score_classes", "score_class_rule",
               "elapsed_s", "build_segmentation_decoder")


# Meta's hub backbones (dinov3.hub.backbones): width, depth, heads, FFN ratio and kind.
HUB_BACKBONES: dict[str, dict[str, Any]] = {
    "vits16": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vits16plus": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=6.0, ffn_layer="swiglu"),
    "vitb16": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vitl16": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vitl16plus": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=6.0,
                       ffn_layer="swiglu"),
    "vith16plus": dict(embed_dim=1280, depth=32, num_heads=20, mlp_ratio=6.0,
                       ffn_layer="swiglu"),
    "vit7b16": dict(embed_dim=4096, depth=40, num_heads=32, mlp_ratio=3.0, ffn_layer="swiglu",
                    ffn_align=64, qkv_bias=False, untie_global_and_local_cls_norm=True),
}
# Meta's release file of each (https://dl.fbaipublicfiles.com/dinov3/<dir>/<file>).
HUB_FILES = {"vits16": "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
             "vits16plus": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
             "vitb16": "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
             "vitl16": "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
             "vitl16plus": "dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth",
             "vith16plus": "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",
             "vit7b16": "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth"}
HUB_URL = "https://dl.fbaipublicfiles.com/dinov3"
# Meta's weights are gated: the download links come by e-mail after this form.
ACCESS_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


def four_even_intervals(depth: int) -> list[int]:
    """Meta's ``FOUR_EVEN_INTERVALS`` taps: ``i * (depth // 4) - 1``, except [4, 11, 17, 23]
    for 24 blocks (the paper's ViT-L)."""
    return [4, 11, 17, 23] if depth == 24 else [i * (depth // 4) - 1 for i in range(1, 5)]


def hub_backbone(name: str, **changes: Any) -> BackboneConfig:
    """Meta's ``dinov3_<name>`` (e.g. ``vitl16``) inside ``DINOv3_Adapter`` with Meta's adapter
    settings (64 stem channels, 16 deformable heads, 4 points, ratio 0.5)."""
    size = HUB_BACKBONES[name]
    taps = four_even_intervals(size["depth"])
    return BackboneConfig(
        kind="dinov3", img_size=224, init_values=1e-5, norm_eps=1e-5, adapter_norm_eps=1e-6,
        use_rel_pos_bias=False, with_injector=False, n_storage_tokens=4, mask_k_bias=True,
        rope_rescale_coords=2.0, interaction_indexes=taps_to_runs(taps),
        **{**size, **changes})


def hub_url(name: str) -> str:
    return f"{HUB_URL}/dinov3_{name}/{HUB_FILES[name]}"


def is_meta_layout(data: Mapping[str, Any]) -> bool:
    backbone = data.get("backbone")
    return isinstance(backbone, Mapping) and "args" in backbone and "adapter" in data


def config_from_meta(data: Mapping[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` of the segmentor whose Meta constructor arguments ``data``
    records."""
    f = FieldReader(data, "")
    f.ignore(*_PROVENANCE)
    num_classes = int(f.require("num_classes"))
    dataset = str(f.take("dataset", ""))
    backbone = _backbone(f.sub("backbone"), f.sub("adapter"))
    head = _head(f.sub("head"), num_classes, backbone.embed_dim)
    inference = inference_from_meta(f.require("pipeline"))
    f.done()
    return ModelConfig(name="dinov3-adapter-m2f", backbone=backbone, head=head,
                       inference=inference,
                       dataset="ade20k" if dataset.lower().startswith("ade20k") else "custom",
                       description="DINOv3 ViT-Adapter + Mask2Former (Meta's segmentor)")


def _backbone(outer: FieldReader, adapter: FieldReader) -> BackboneConfig:
    outer.expect("constructor", "dinov3.hub.backbones._make_dinov3_vit")
    outer.ignore("derived")
    f = outer.sub("args")
    outer.done()
    for key, allowed in (("pos_embed_rope_min_period", None), ("pos_embed_rope_max_period", None),
                         ("pos_embed_rope_shift_coords", None),
                         ("pos_embed_rope_jitter_coords", None),
                         ("pos_embed_rope_normalize_coords", "separate"),
                         ("pos_embed_rope_dtype", "fp32"), ("ffn_bias", True),
                         ("proj_bias", True), ("untie_cls_and_patch_norms", False)):
        f.expect(key, allowed)
    f.ignore("drop_path_rate")  # the frozen backbone's (the hub's: 0)
    norm = f.require("norm_layer")
    ffn = f.require("ffn_layer")
    if norm not in _NORM_EPS or ffn not in _FFN_LAYERS:
        raise ConfigError(f"unsupported backbone.args norm_layer {norm!r} or ffn_layer {ffn!r} "
                          f"(supported: {', '.join(_NORM_EPS)}; {', '.join(_FFN_LAYERS)})")
    ffn_layer, align = _FFN_LAYERS[ffn]
    depth = int(f.require("depth"))
    kwargs: dict[str, Any] = dict(
        kind="dinov3", img_size=int(f.take("img_size", 224)),
        patch_size=int(f.take("patch_size", 16)), in_channels=int(f.take("in_chans", 3)),
        embed_dim=int(f.require("embed_dim")), depth=depth, num_heads=int(f.require("num_heads")),
        mlp_ratio=float(f.require("ffn_ratio")), qkv_bias=bool(f.take("qkv_bias", True)),
        init_values=f.take("layerscale_init"), norm_eps=_NORM_EPS[norm], ffn_layer=ffn_layer,
        ffn_align=align, rope_base=float(f.take("pos_embed_rope_base", 100.0)),
        rope_rescale_coords=f.take("pos_embed_rope_rescale_coords"),
        n_storage_tokens=int(f.take("n_storage_tokens", 0)),
        mask_k_bias=bool(f.take("mask_k_bias", False)),
        untie_global_and_local_cls_norm=bool(f.take("untie_global_and_local_cls_norm", False)),
        use_rel_pos_bias=False, with_injector=False, adapter_norm_eps=1e-6)
    f.done()
    adapter.ignore("class_")
    args = {**adapter.take("meta_defaults", {}), **adapter.take("overrides_passed", {})}
    taps = adapter.require("interaction_indexes")
    adapter.done()
    a = FieldReader(args, "adapter")
    a.ignore("interaction_indexes", "pretrain_size", "with_cp", "drop_path_rate", "init_values")
    kwargs.update(
        conv_inplane=int(a.take("conv_inplane", 64)), n_points=int(a.take("n_points", 4)),
        deform_num_heads=int(a.take("deform_num_heads", 16)),
        with_cffn=bool(a.take("with_cffn", True)), cffn_ratio=float(a.take("cffn_ratio", 0.25)),
        deform_ratio=float(a.take("deform_ratio", 0.5)),
        add_vit_feature=bool(a.take("add_vit_feature", True)),
        use_extra_extractor=bool(a.take("use_extra_extractor", True)),
        interaction_indexes=taps_to_runs([int(t) for t in taps]))
    a.done()
    return BackboneConfig(**kwargs)


def taps_to_runs(taps: list[int]) -> tuple[tuple[int, int], ...]:
    """Meta's tapped blocks as runs of blocks ending at each tap: [2, 5, 8, 11] ->
    ((0, 2), (3, 5), (6, 8), (9, 11))."""
    runs, first = [], 0
    for tap in taps:
        runs.append((first, tap))
        first = tap + 1
    return tuple(runs)


def _head(f: FieldReader, num_classes: int, embed_dim: int) -> HeadConfig:
    f.expect("class_", "dinov3.eval.segmentation.models.heads.mask2former_head.Mask2FormerHead")
    f.ignore("input_shape", "ignore_value", "num_classes")
    hidden = int(f.require("hidden_dim"))
    pd = f.sub("pixel_decoder")
    pd.expect("norm", "GN")
    pd.expect("transformer_in_features", ["1", "2", "3", "4"])
    pd.expect("common_stride", 4)
    pd.ignore("transformer_dropout", "conv_dim", "mask_dim")
    pixel = PixelDecoderConfig(
        num_layers=int(pd.take("transformer_enc_layers", 6)),
        num_heads=int(pd.take("transformer_nheads", 16)),
        ffn_channels=int(pd.take("transformer_dim_feedforward", 4096)),
        num_points=int(pd.take("enc_n_points", 4)),
        num_groups=int(pd.take("groupnorm_groups", 32)), pos_num_feats=hidden // 2,
        float32=True)
    pd.done()
    pr = f.sub("predictor")
    pr.expect("pre_norm", False)
    pr.expect("mask_classification", True)
    pr.ignore("in_channels", "hidden_dim", "mask_dim", "num_classes")
    decoder = TransformerDecoderConfig(
        num_layers=int(pr.take("dec_layers", 9)), num_heads=int(pr.take("nheads", 16)),
        ffn_channels=int(pr.take("dim_feedforward", 4096)), pos_num_feats=hidden // 2)
    head = HeadConfig(
        in_channels=(embed_dim,) * 4, feat_channels=hidden, out_channels=hidden,
        num_things_classes=num_classes, num_stuff_classes=0,
        num_queries=int(pr.take("num_queries", 100)),
        enforce_decoder_input_project=bool(pr.take("enforce_input_project", False)),
        pixel_decoder=pixel, decoder=decoder)
    pr.done()
    f.done()
    return head


# Meta's eval transforms: short side img_size (896), slide crop 896 / stride 596, TTA ratios.
META_SHORT_SIDE = 896
META_CROP = 896
META_STRIDE = 596
META_TTA_RATIOS: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
# Fields of a reference set's pipeline section that describe what the others imply (the resize
# rule, the windows it gives, the combination) rather than set anything.
_DESCRIPTIVE = ("stride_rule", "resize", "single_scale", "tta", "combination")


def dinov3_inference(short_side: int = META_SHORT_SIDE, crop: int = META_CROP,
                     stride: int = META_STRIDE, **changes: Any) -> InferenceConfig:
    """Meta's test pipeline (``pipeline="dinov3"``) with its ADE20K settings by default."""
    settings: dict[str, Any] = {"tta_ratios": META_TTA_RATIOS, **changes}
    return InferenceConfig(pipeline="dinov3", short_side=short_side, crop_size=(crop, crop),
                           stride=(stride, stride), **settings)


def inference_from_meta(section: Mapping[str, Any], where: str = "pipeline") -> InferenceConfig:
    """The ``pipeline`` section of a DINOv3 reference set's config.json (``img_size``,
    ``crop_size``, ``stride``, ``tta_ratios``, ``mean``, ``std``) as an InferenceConfig;
    :class:`~vitadapter.errors.ConfigError` names a missing or unknown field."""
    f = FieldReader(section, where)
    f.ignore(*_DESCRIPTIVE)
    config = InferenceConfig(
        pipeline="dinov3", short_side=f.require("img_size"), crop_size=_numbers(f, "crop_size"),
        stride=_numbers(f, "stride"), tta_ratios=_numbers(f, "tta_ratios"),
        mean=_numbers(f, "mean"), std=_numbers(f, "std"))
    f.done()
    return config


def _numbers(f: FieldReader, key: str) -> Any:
    """A list of numbers as a tuple (the ModelConfig checks the values)."""
    value = f.require(key)
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"'{f.path(key)}' must be a list of numbers, got {value!r}")
    return tuple(value)

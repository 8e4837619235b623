"""Named configurations of the released ViT-Adapter segmentation checkpoints.

Presets are data: each one is a :class:`~vitadapter.config.ModelConfig` whose values come from
the official configs in czczup/ViT-Adapter (``segmentation/configs/<dataset>/*.py``, the ``_ss``
variant where there are two; TTA ratios from the ``_ms`` one) and whose ``weights_url`` is the
release asset named in that folder's README. Names say dataset, backbone, head and crop.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .dinov3 import ACCESS_PAGE, HUB_URL, dinov3_inference, hub_backbone, hub_url
from .schema import (
    AuxiliaryHeadConfig,
    BackboneConfig,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    PixelDecoderConfig,
    TransformerDecoderConfig,
    UperNetConfig,
)

_RELEASES = "https://github.com/czczup/ViT-Adapter/releases/download"
_MS_RATIOS_WIDE = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
_BLOCKS_12 = ((0, 2), (3, 5), (6, 8), (9, 11))
_HALF = (127.5, 127.5, 127.5)  # AugReg-B/L normalisation: mean = std = 127.5

# Plain-ViT adapters (official ViTAdapter): width, heads, deform heads, deform ratio, depth.
_VIT_SIZES: dict[str, dict[str, Any]] = {
    "t": dict(embed_dim=192, num_heads=3, deform_num_heads=6, deform_ratio=1.0),
    "s": dict(embed_dim=384, num_heads=6, deform_num_heads=6, deform_ratio=1.0),
    "b": dict(embed_dim=768, num_heads=12, deform_num_heads=12, deform_ratio=0.5),
    "l": dict(embed_dim=1024, num_heads=16, deform_num_heads=16, deform_ratio=0.5, depth=24,
              interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23))),
}


def _vit(size: str, pretrain_size: int = 224) -> BackboneConfig:
    """A plain-ViT adapter; ``pretrain_size`` is the grid of its pos_embed (AugReg-B/L: 384)."""
    sizes = {"depth": 12, "interaction_indexes": _BLOCKS_12, **_VIT_SIZES[size]}
    return BackboneConfig(kind="vit", img_size=pretrain_size, use_rel_pos_bias=False,
                          init_values=0.0, layer_scale=True, **sizes)


def _beit_base(img_size: int) -> BackboneConfig:
    return BackboneConfig(img_size=img_size, embed_dim=768, depth=12, num_heads=12,
                          deform_num_heads=12, interaction_indexes=_BLOCKS_12)


def _upernet(embed_dim: int, num_classes: int, channels: int = 512) -> UperNetConfig:
    return UperNetConfig(in_channels=(embed_dim,) * 4, channels=channels,
                         num_classes=num_classes,
                         auxiliary=AuxiliaryHeadConfig(in_channels=embed_dim,
                                                       num_classes=num_classes))


def _m2f_base(things: int, stuff: int) -> HeadConfig:
    """Mask2Former of the BEiT-Adapter-B configs: 256 channels, 8 heads, 100 queries."""
    return HeadConfig(
        in_channels=(768,) * 4, feat_channels=256, out_channels=256, num_things_classes=things,
        num_stuff_classes=stuff, num_queries=100,
        pixel_decoder=PixelDecoderConfig(num_heads=8, ffn_channels=1024, pos_num_feats=128),
        decoder=TransformerDecoderConfig(num_heads=8, ffn_channels=2048, pos_num_feats=128))


def _test(crop: int, stride: int, img_scale: tuple[int, int], *,
          mean_std: tuple[float, float, float] | None = None) -> InferenceConfig:
    norm = {} if mean_std is None else {"mean": mean_std, "std": mean_std}
    return InferenceConfig(img_scale=img_scale, crop_size=(crop, crop), stride=(stride, stride),
                           tta_ratios=_MS_RATIOS_WIDE, **norm)  # type: ignore[arg-type]


def _dinov3_m2f(embed_dim: int, hidden: int, heads: int, pixel_ffn: int, decoder_ffn: int,
                queries: int = 100, num_classes: int = 150) -> HeadConfig:
    """Mask2Former over a DINOv3 adapter (Meta's layout): ``hidden`` channels and ``heads``
    heads in the pixel decoder and the transformer decoder, their FFN widths."""
    return HeadConfig(
        in_channels=(embed_dim,) * 4, feat_channels=hidden, out_channels=hidden,
        num_things_classes=num_classes, num_stuff_classes=0, num_queries=queries,
        pixel_decoder=PixelDecoderConfig(num_heads=heads, ffn_channels=pixel_ffn,
                                         pos_num_feats=hidden // 2, float32=True),
        decoder=TransformerDecoderConfig(num_heads=heads, ffn_channels=decoder_ffn,
                                         pos_num_feats=hidden // 2))


# This project's fine-tuning presets (Meta released a head for ViT-7B only): backbone, size,
# head width, heads, pixel-decoder and decoder FFN widths. Meta's 2048-wide head costs 38x a
# ViT-S's FLOPs; these keep the head's FLOPs at a 512 crop within about the frozen backbone +
# adapter's: Mask2Former's classic 256 for S and B, 512 for L and H+ (README "DINOv3").
_DINOV3_FINETUNE = (("vits16", "S", 256, 8, 1024, 2048), ("vitb16", "B", 256, 8, 1024, 2048),
                    ("vitl16", "L", 512, 16, 2048, 4096),
                    ("vith16plus", "H+", 512, 16, 2048, 4096))

_ADE_512 = _test(512, 341, (2048, 512))
_ADE_512_HALF = _test(512, 341, (2048, 512), mean_std=_HALF)
_COCO10K_512 = _test(512, 341, (2048, 512))
_PASCAL_480 = _test(480, 320, (4096, 520))
_COCO_M2F = (80, 91)
_PASCAL_M2F = (29, 30)

SEED_PRESET = "cocostuff164k-beit-adapter-l-m2f-896"

PRESETS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        ModelConfig(
            name=SEED_PRESET,
            dataset="coco-stuff164k",
            weights_url=f"{_RELEASES}/v0.2.6/mask2former_beit_adapter_large_896_80k_cocostuff164k.zip",
            description="BEiT-Adapter-L + Mask2Former, COCO-Stuff-164k, 896 crop "
                        "(official 51.7 mIoU single-scale; ModelScope's model)",
        ),
        ModelConfig(
            name="cocostuff164k-beitv2-adapter-l-m2f-896",
            dataset="coco-stuff164k",
            weights_url=f"{_RELEASES}/v0.3.1/mask2former_beitv2_adapter_large_896_80k_cocostuff164k.zip",
            description="BEiTv2-Adapter-L + Mask2Former, COCO-Stuff-164k, 896 crop (52.3 mIoU)",
        ),
        ModelConfig(
            name="ade20k-beit-adapter-l-m2f-896",
            dataset="ade20k",
            head=HeadConfig(num_things_classes=100, num_stuff_classes=50, num_queries=200),
            weights_url=f"{_RELEASES}/v0.2.0/mask2former_beit_adapter_large_896_80k_ade20k.zip",
            description="BEiT-Adapter-L + Mask2Former, ADE20K, 896 crop (59.4 mIoU)",
        ),
        ModelConfig(
            name="ade20k-beit-adapter-l-m2f-640",
            dataset="ade20k",
            backbone=BackboneConfig(img_size=640),
            head=HeadConfig(num_things_classes=100, num_stuff_classes=50, num_queries=100),
            inference=InferenceConfig(img_scale=(2048, 640), crop_size=(640, 640),
                                      stride=(426, 426), tta_ratios=_MS_RATIOS_WIDE),
            weights_url=f"{_RELEASES}/v0.2.2/mask2former_beit_adapter_large_640_160k_ade20k.zip",
            description="BEiT-Adapter-L + Mask2Former, ADE20K, 640 crop (58.3 mIoU)",
        ),
        ModelConfig(
            name="cityscapes-beit-adapter-l-m2f-896",
            dataset="cityscapes",
            head=HeadConfig(num_things_classes=8, num_stuff_classes=11, num_queries=100),
            inference=InferenceConfig(img_scale=(2048, 1024),
                                      tta_ratios=(*_MS_RATIOS_WIDE, 2.0)),
            weights_url=f"{_RELEASES}/v0.2.3/mask2former_beit_adapter_large_896_80k_cityscapes.zip",
            description="BEiT-Adapter-L + Mask2Former, Cityscapes, 896 crop (84.9 mIoU)",
        ),
        ModelConfig(
            name="mapillary-beit-adapter-l-m2f-896",
            dataset="cityscapes",
            head=HeadConfig(num_things_classes=8, num_stuff_classes=11, num_queries=100),
            inference=InferenceConfig(img_scale=(2048, 1024),
                                      tta_ratios=(*_MS_RATIOS_WIDE, 2.0)),
            weights_url=f"{_RELEASES}/v0.2.3/mask2former_beit_adapter_large_896_80k_mapillary.zip",
            description="BEiT-Adapter-L + Mask2Former, Mapillary Vistas pre-training of the "
                        "Cityscapes model (its 19-class head), 896 crop (no reported mIoU)",
        ),
        ModelConfig(
            name="ade20k-beitv2-adapter-l-m2f-896",
            dataset="ade20k",
            head=HeadConfig(num_things_classes=100, num_stuff_classes=50, num_queries=200),
            inference=InferenceConfig(tta_ratios=(800 / 896, 832 / 896, 864 / 896, 1.0)),
            weights_url=f"{_RELEASES}/v0.3.1/mask2former_beitv2_adapter_large_896_80k_ade20k.zip",
            description="BEiTv2-Adapter-L + Mask2Former, ADE20K, 896 crop (61.2 mIoU; the "
                        "official single-scale test flips too: use --tta for it)",
        ),
        ModelConfig(
            name="ade20k-beit-adapter-l-upernet-640",
            dataset="ade20k",
            backbone=BackboneConfig(img_size=640),
            head=_upernet(1024, 150, channels=1024),
            inference=_test(640, 426, (2048, 640)),
            weights_url=f"{_RELEASES}/v0.2.1/upernet_beit_adapter_large_640_160k_ade20k.pth.tar",
            description="BEiT-Adapter-L + UperNet, ADE20K, 640 crop (58.0 mIoU)",
        ),
        *(
            ModelConfig(
                name=f"ade20k-{pretrain}-adapter-{size}-upernet-512",
                dataset="ade20k",
                backbone=_vit(size, 384 if half else 224),
                head=_upernet(_VIT_SIZES[size]["embed_dim"], 150),
                inference=_ADE_512_HALF if half else _ADE_512,
                weights_url=f"{_RELEASES}/v0.3.1/{asset}",
                description=f"ViT-Adapter-{size.upper()} ({pretrain_name}) + UperNet, ADE20K, "
                            f"512 crop ({miou} mIoU)",
            )
            for pretrain, pretrain_name, size, half, asset, miou in (
                ("deit", "DeiT-T", "t", False, "upernet_deit_adapter_tiny_512_160_ade20k.pth.tar",
                 42.6),
                ("deit", "DeiT-S", "s", False, "upernet_deit_adapter_small_512_160k_ade20k.pth",
                 46.2),
                ("deit", "DeiT-B", "b", False,
                 "upernet_deit_adapter_base_512_160k_ade20k.pth.tar", 48.8),
                ("augreg", "AugReg-T", "t", False,
                 "upernet_augreg_adapter_tiny_512_160_ade20k.pth.tar", 43.9),
                ("augreg", "AugReg-B", "b", True,
                 "upernet_augreg_adapter_base_512_160k_ade20k.pth.tar", 51.9),
                ("augreg", "AugReg-L", "l", True,
                 "upernet_augreg_adapter_large_512_160k_ade20k.pth.tar", 53.4),
            )
        ),
        ModelConfig(
            name="cocostuff164k-beit-adapter-l-upernet-640",
            dataset="coco-stuff164k",
            backbone=BackboneConfig(img_size=640),
            head=_upernet(1024, 171, channels=1024),
            inference=_test(640, 426, (2560, 640)),
            weights_url=f"{_RELEASES}/v0.2.6/upernet_beit_adapter_large_640_80k_cocostuff164k.pth.tar",
            description="BEiT-Adapter-L + UperNet, COCO-Stuff-164k, 640 crop (50.5 mIoU)",
        ),
        ModelConfig(
            name="cocostuff10k-beit-adapter-b-m2f-512",
            dataset="coco-stuff10k",
            backbone=_beit_base(512),
            head=_m2f_base(*_COCO_M2F),
            inference=_COCO10K_512,
            weights_url=f"{_RELEASES}/v0.2.9/mask2former_beit_adapter_base_512_40k_cocostuff10k.pth.tar",
            description="BEiT-Adapter-B + Mask2Former, COCO-Stuff-10k, 512 crop (50.0 mIoU)",
        ),
        ModelConfig(
            name="cocostuff10k-beit-adapter-l-upernet-512",
            dataset="coco-stuff10k",
            backbone=BackboneConfig(img_size=512),
            head=_upernet(1024, 171, channels=1024),
            inference=_COCO10K_512,
            weights_url=f"{_RELEASES}/v0.2.4/upernet_beit_adapter_large_512_80k_cocostuff10k.pth.tar",
            description="BEiT-Adapter-L + UperNet, COCO-Stuff-10k, 512 crop (51.0 mIoU)",
        ),
        ModelConfig(
            name="cocostuff10k-beit-adapter-l-m2f-512",
            dataset="coco-stuff10k",
            backbone=BackboneConfig(img_size=512),
            head=HeadConfig(num_things_classes=80, num_stuff_classes=91, num_queries=100),
            inference=_COCO10K_512,
            weights_url=f"{_RELEASES}/v0.2.5/mask2former_beit_adapter_large_512_40k_cocostuff10k.zip",
            description="BEiT-Adapter-L + Mask2Former, COCO-Stuff-10k, 512 crop (53.2 mIoU)",
        ),
        ModelConfig(
            name="pascalcontext59-beit-adapter-b-m2f-480",
            dataset="pascal-context-59",
            backbone=_beit_base(480),
            head=_m2f_base(*_PASCAL_M2F),
            inference=_PASCAL_480,
            weights_url=f"{_RELEASES}/v0.2.8/mask2former_beit_adapter_base_480_40k_pascal_context_59.pth.tar",
            description="BEiT-Adapter-B + Mask2Former, Pascal Context-59, 480 crop (64.0 mIoU)",
        ),
        ModelConfig(
            name="pascalcontext59-beit-adapter-l-upernet-480",
            dataset="pascal-context-59",
            backbone=BackboneConfig(img_size=480),
            head=_upernet(1024, 59, channels=1024),
            inference=_PASCAL_480,
            weights_url=f"{_RELEASES}/v0.2.7/upernet_beit_adapter_large_480_80k_pascal_context_59.pth.tar",
            description="BEiT-Adapter-L + UperNet, Pascal Context-59, 480 crop (67.0 mIoU)",
        ),
        ModelConfig(
            name="pascalcontext59-beit-adapter-l-m2f-480",
            dataset="pascal-context-59",
            backbone=BackboneConfig(img_size=480),
            head=HeadConfig(num_things_classes=29, num_stuff_classes=30, num_queries=100),
            inference=_PASCAL_480,
            weights_url=f"{_RELEASES}/v0.2.7/mask2former_beit_adapter_large_480_40k_pascal_context_59.zip",
            description="BEiT-Adapter-L + Mask2Former, Pascal Context-59, 480 crop (67.8 mIoU)",
        ),
        ModelConfig(
            name="ade20k-dinov3-vit7b16-adapter-m2f-896",
            dataset="ade20k",
            backbone=hub_backbone("vit7b16"),
            head=_dinov3_m2f(4096, 2048, 16, 4096, 4096),
            inference=dinov3_inference(),
            weights_url=f"{HUB_URL}/dinov3_vit7b16/dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth",
            backbone_weights_url=hub_url("vit7b16"),
            weights_access=ACCESS_PAGE,
            description="Meta's DINOv3 ViT-7B/16 + DINOv3_Adapter + Mask2Former (hidden 2048), "
                        "ADE20K, 896 crop (63.0 mIoU, Meta's multi-scale test: --tta); head "
                        "file dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth, 927,454,817 float32 "
                        "values (3.7 GB), backbone 6.7 B parameters (26.9 GB)",
        ),
        *(
            ModelConfig(
                name=f"dinov3-{backbone}-adapter-m2f",
                dataset="ade20k",
                backbone=hub_backbone(backbone),
                head=_dinov3_m2f(hub_backbone(backbone).embed_dim, hidden, heads, pixel_ffn,
                                 decoder_ffn),
                inference=dinov3_inference(short_side=512, crop=512, stride=341),
                backbone_weights_url=hub_url(backbone),
                weights_access=ACCESS_PAGE,
                description=f"DINOv3 ViT-{size}/16 + adapter + Mask2Former (hidden {hidden}) to "
                            "fine-tune on your data (vitadapter train --backbone-checkpoint "
                            f"{hub_url(backbone).rsplit('/', 1)[1]}); 512 crop, ADE20K classes "
                            "until trained",
            )
            for backbone, size, hidden, heads, pixel_ffn, decoder_ffn in _DINOV3_FINETUNE
        ),
    )
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = "\n  ".join(sorted(PRESETS))
        raise ConfigError(
            f"unknown model preset {name!r}; known presets:\n  {known}\n"
            "or pass a config.json path"
        ) from None

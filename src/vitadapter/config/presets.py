"""Named configurations of the released BEiT-Adapter-L + Mask2Former checkpoints.

Presets are data: each one is a :class:`~vitadapter.config.ModelConfig` whose values come from
the official configs in czczup/ViT-Adapter (``segmentation/configs/<dataset>/*_ss.py``) and whose
``weights_url`` is the official release asset.
"""

from __future__ import annotations

from ..errors import ConfigError
from .schema import BackboneConfig, HeadConfig, InferenceConfig, ModelConfig

_RELEASES = "https://github.com/czczup/ViT-Adapter/releases/download"
_MS_RATIOS_WIDE = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

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

"""Backbone and head kinds in the config: our JSON round trip, the official mmcv layout, and
clear refusals."""

from __future__ import annotations

import copy
import json

import pytest

from vitadapter import ConfigError, ModelConfig
from vitadapter.config import config_from_dict
from vitadapter.config.schema import AuxiliaryHeadConfig, HeadConfig, UperNetConfig

from .conftest import set_config


def official(name: str) -> dict:
    return json.loads(set_config(name).read_text())


def test_official_vit_adapter_upernet_layout():
    cfg = config_from_dict(official("tiny-vit-adapter-upernet"))
    b, h = cfg.backbone, cfg.head
    assert (b.kind, b.img_size, b.embed_dim, b.depth, b.num_heads) == ("vit", 224, 96, 4, 3)
    assert (b.layer_scale, b.use_rel_pos_bias, b.deform_num_heads, b.deform_ratio) == (
        True, False, 6, 1.0)
    assert isinstance(h, UperNetConfig)
    assert (h.channels, h.pool_scales, h.num_classes, h.dropout_ratio) == (64, (1, 2, 3, 6),
                                                                           150, 0.1)
    assert h.auxiliary == AuxiliaryHeadConfig(in_channels=96, channels=32, in_index=2,
                                              num_convs=1, concat_input=False, num_classes=150,
                                              dropout_ratio=0.1, loss_weight=0.4)
    assert cfg.inference.crop_size == (128, 128) and cfg.dataset == "ade20k"


def test_official_beit_adapter_upernet_layout():
    cfg = config_from_dict(official("tiny-beit-adapter-upernet"))
    assert cfg.backbone.kind == "beit" and cfg.backbone.img_size == 128
    assert isinstance(cfg.head, UperNetConfig) and cfg.head.num_classes == 171
    assert cfg.dataset == "coco-stuff164k"


@pytest.mark.parametrize("name", ["tiny-vit-adapter-upernet", "tiny-beit-adapter-upernet",
                                  "tiny-upstream"])
def test_our_json_round_trip(name):
    cfg = config_from_dict(official(name))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["head"]["kind"] in ("upernet", "mask2former")
    assert config_from_dict(data) == cfg


def test_json_without_kinds_reads_as_beit_mask2former():
    data = ModelConfig().to_dict()
    del data["backbone"]["kind"], data["head"]["kind"]
    cfg = config_from_dict(data)
    assert cfg.backbone.kind == "beit" and isinstance(cfg.head, HeadConfig)


def test_upernet_without_auxiliary_head():
    data = config_from_dict(official("tiny-vit-adapter-upernet")).to_dict()
    data["head"]["auxiliary"] = None
    cfg = config_from_dict(data)
    assert isinstance(cfg.head, UperNetConfig) and cfg.head.auxiliary is None


def test_unknown_fields_and_kinds_are_refused():
    data = official("tiny-vit-adapter-upernet")
    bad = copy.deepcopy(data)
    bad["config"]["model"]["backbone"]["use_fancy_norm"] = True
    with pytest.raises(ConfigError, match=r"'model.backbone.use_fancy_norm'"):
        config_from_dict(bad)
    bad = copy.deepcopy(data)
    bad["config"]["model"]["decode_head"]["type"] = "PSPHead"
    with pytest.raises(ConfigError, match=r"'PSPHead' for 'model.decode_head.type'"):
        config_from_dict(bad)
    bad = copy.deepcopy(data)
    bad["config"]["model"]["backbone"]["pretrain_size"] = 384
    with pytest.raises(ConfigError, match=r"pretrain_size' \(384\) must equal"):
        config_from_dict(bad)
    ours = config_from_dict(data).to_dict()
    ours["head"]["kind"] = "segformer"
    with pytest.raises(ConfigError, match=r"unknown head kind 'segformer'"):
        config_from_dict(ours)
    ours = config_from_dict(data).to_dict()
    ours["backbone"]["kind"] = "swin"
    with pytest.raises(ConfigError,
                       match=r"'backbone.kind' must be one of 'beit', 'vit', 'dinov3', got 'swin'"):
        config_from_dict(ours)


def test_inconsistent_upernet_configs_are_refused():
    vit = config_from_dict(official("tiny-vit-adapter-upernet"))
    with pytest.raises(ConfigError, match=r"no relative position bias"):
        vit.replace(backbone=vit.backbone.__class__(
            **{**vit.backbone.__dict__, "use_rel_pos_bias": True}))
    head = vit.head
    assert isinstance(head, UperNetConfig) and head.auxiliary is not None
    aux = AuxiliaryHeadConfig(**{**head.auxiliary.__dict__, "num_classes": 151})
    with pytest.raises(ConfigError, match=r"auxiliary_head.num_classes \(151\) must equal"):
        vit.replace(head=UperNetConfig(**{**head.__dict__, "auxiliary": aux}))

from __future__ import annotations

import copy
import json

import pytest

from vitadapter import ConfigError, ModelConfig, build_model, get_preset, resolve_config
from vitadapter.config import BackboneConfig, config_from_dict
from vitadapter.config.mmcv import config_from_official
from vitadapter.config.parse import load_config_file
from vitadapter.config.presets import SEED_PRESET

from .conftest import REFERENCE, set_config


def reference_json(name: str = "tiny-upstream") -> dict:
    return json.loads(set_config(name).read_text())


def test_reference_config_values():
    cfg = resolve_config(set_config("tiny-upstream"))
    b, h = cfg.backbone, cfg.head
    assert (b.img_size, b.embed_dim, b.depth, b.num_heads, b.conv_inplane) == (128, 64, 4, 4, 16)
    assert b.interaction_indexes == ((0, 0), (1, 1), (2, 2), (3, 3))
    assert (h.num_classes, h.num_queries, h.feat_channels) == (171, 10, 64)
    assert (h.pixel_decoder.num_layers, h.pixel_decoder.num_heads) == (2, 8)
    assert (h.pixel_decoder.ffn_channels, h.pixel_decoder.pos_num_feats) == (256, 32)
    assert (h.decoder.num_layers, h.decoder.num_heads, h.decoder.ffn_channels) == (3, 8, 256)
    assert cfg.inference.img_scale == (512, 128)
    assert (cfg.inference.crop_size, cfg.inference.stride) == ((128, 128), (64, 64))
    assert cfg.inference.mean == (123.675, 116.28, 103.53)
    assert cfg.behaviour == "official"
    assert cfg.name == "tiny-upstream"


def test_reference_behaviour_flag_is_honoured():
    assert resolve_config(set_config("tiny-modelscope")).behaviour == "modelscope"
    assert resolve_config(set_config("tiny-modelscope"), "official").behaviour == "official"


def test_seed_preset_values():
    cfg = get_preset(SEED_PRESET)
    assert cfg.backbone == BackboneConfig()
    assert (cfg.backbone.img_size, cfg.backbone.embed_dim, cfg.backbone.depth) == (896, 1024, 24)
    assert cfg.backbone.interaction_indexes == ((0, 5), (6, 11), (12, 17), (18, 23))
    assert (cfg.head.num_classes, cfg.head.num_queries) == (171, 200)
    assert cfg.inference.img_scale == (3584, 896) and cfg.inference.stride == (512, 512)
    assert cfg.weights_url.endswith("v0.2.6/mask2former_beit_adapter_large_896_80k_"
                                    "cocostuff164k.zip")


def test_unknown_field_is_named():
    data = reference_json()
    data["config"]["model"]["backbone"]["window_shift"] = 3
    with pytest.raises(ConfigError, match=r"'model\.backbone\.window_shift'"):
        config_from_official(data)


def test_unsupported_value_is_named():
    data = reference_json()
    data["config"]["model"]["backbone"]["use_abs_pos_emb"] = True
    with pytest.raises(ConfigError, match=r"unsupported value True for "
                                          r"'model\.backbone\.use_abs_pos_emb'"):
        config_from_official(data)


def test_unsupported_transform_is_named():
    data = reference_json()
    pipeline = data["config"]["data"]["test"]["pipeline"]
    pipeline[1]["transforms"].insert(0, {"type": "CLAHE"})
    with pytest.raises(ConfigError, match=r"unsupported transform 'CLAHE' at "
                                          r"'data\.test\.pipeline\[1\]\.transforms\[0\]\.type'"):
        config_from_official(data)


def test_multiscale_pipeline_gives_tta_settings():
    data = copy.deepcopy(reference_json()["config"])
    aug = data["data"]["test"]["pipeline"][1]
    aug.update(img_ratios=[0.5, 1.0], flip=True)
    aug["transforms"].insert(2, {"type": "PadShortSide", "size": 128, "pad_val": 0})
    cfg = config_from_official(data)
    assert cfg.inference.tta_ratios == (0.5, 1.0) and cfg.inference.tta_flip


def test_bare_model_dict_is_accepted():
    model_dict = reference_json()["config"]["model"]
    cfg = config_from_official(model_dict)
    assert cfg.backbone.embed_dim == 64 and cfg.inference.crop_size == (128, 128)


def test_our_layout_round_trips():
    cfg = resolve_config(set_config("tiny-modelscope"))
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match=r"'backbone\.depthh'"):
        config_from_dict({"backbone": {"depthh": 3}})


def test_inconsistent_config_is_refused():
    with pytest.raises(ConfigError, match="interaction_indexes end at block 23 but depth is 12"):
        ModelConfig(backbone=BackboneConfig(depth=12))
    with pytest.raises(ConfigError, match="behaviour must be one of official, modelscope"):
        ModelConfig(behaviour="mmcv")


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match=rf"(?s)unknown model preset 'beit-xl'.*{SEED_PRESET}"):
        build_model("beit-xl", device="meta")


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        resolve_config(bad)


@pytest.mark.parametrize(("where", "value", "message"), [
    (("backbone", "num_heads"), 0, r"'backbone.num_heads' must be at least 1, got 0"),
    (("backbone", "mlp_ratio"), float("nan"), r"'backbone.mlp_ratio' must be a finite number"),
    (("backbone", "mlp_ratio"), -4.0, r"'backbone.mlp_ratio' must be positive, got -4.0"),
    (("backbone", "embed_dim"), "64", r"'backbone.embed_dim' must be an integer, got '64'"),
    (("backbone", "depth"), True, r"'backbone.depth' must be an integer, got True"),
    (("backbone", "img_size"), 2**20, r"'backbone.img_size' is larger than 65536"),
    (("backbone", "img_size"), 8192, r"'backbone.img_size' is larger than 4096 pixels"),
    (("inference", "std"), [float("inf"), 1.0, 1.0],
     r"'inference.std' item 0 must be a finite number, got \(inf, 1.0, 1.0\)"),
    (("inference", "std"), [58.0, 0.0, 57.0], r"'inference.std' must be positive"),
    (("inference", "mean"), [123.0], r"'inference.mean' must be a list of 3 values"),
    (("inference", "crop_size"), "64", r"'inference.crop_size' must be a list"),
    (("inference", "stride"), [0, 8], r"'inference.stride' must be at least 1"),
    (("head", "decoder", "num_heads"), -1,
     r"'head.decoder.num_heads' must be at least 1, got -1"),
    (("head", "num_queries"), 1.5, r"'head.num_queries' must be an integer, got 1.5"),
    (("backbone", "init_values"), "1e-6", r"'backbone.init_values' must be a finite number "
                                          r"or must be null"),
])
def test_field_values_are_checked_with_the_field_named(tmp_path, where, value, message):
    data = json.loads(json.dumps(load_config_file(REFERENCE / "tiny-upstream" / "config.json")
                                 .to_dict()))
    node = data
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        load_config_file(path)

"""DINOv3 beyond parity: configuration checks, Meta's mixed precision, the frozen ViT, gated
weights."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from vitadapter import build_model, load_checkpoint
from vitadapter.config import BackboneConfig, ModelConfig, config_from_dict, get_preset
from vitadapter.errors import CheckpointError, ConfigError
from vitadapter.weights.download import fetch_weights

from .conftest import REFERENCE

SET = REFERENCE / "tiny-dinov3-adapter-m2f"


@pytest.fixture(scope="module")
def meta_config() -> dict:
    return json.loads((SET / "config.json").read_text())


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    model = build_model(SET / "config.json", device="meta")
    load_checkpoint(model, SET / "head.pth", backbone=SET / "backbone.pth")
    return model


def test_dinov3_fields_are_refused_on_other_backbones() -> None:
    with pytest.raises(ConfigError, match="n_storage_tokens applies to DINOv3 backbones only"):
        ModelConfig(backbone=BackboneConfig(n_storage_tokens=4))
    dinov3 = get_preset("dinov3-vits16-adapter-m2f")
    with pytest.raises(ConfigError, match=r"multiple of 4 \(axial RoPE"):
        dinov3.replace(backbone=dataclasses.replace(dinov3.backbone, num_heads=64))


@pytest.mark.parametrize(("path", "value", "message"), [
    (("backbone", "args", "norm_layer"), "rmsnorm", "norm_layer 'rmsnorm'"),
    (("backbone", "args", "pos_embed_rope_dtype"), "bf16", "pos_embed_rope_dtype"),
    (("head", "predictor", "pre_norm"), True, "pre_norm"),
    (("head", "predictor", "dropout"), 0.1, "'head.predictor.dropout'"),
])
def test_meta_layout_refuses_what_it_does_not_reproduce(meta_config: dict, path: tuple,
                                                        value: object, message: str) -> None:
    data = copy.deepcopy(meta_config)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_meta_layout_reads_metas_constructor_arguments(meta_config: dict) -> None:
    cfg = config_from_dict(meta_config)
    b, h = cfg.backbone, cfg.head
    assert (b.kind, b.embed_dim, b.depth, b.num_heads, b.n_storage_tokens) == ("dinov3", 64, 12,
                                                                              4, 4)
    assert b.taps == (2, 5, 8, 11) and not b.with_injector and b.conv_inplane == 16
    assert (b.norm_eps, b.adapter_eps) == (1e-5, 1e-6)
    assert (h.feat_channels, h.num_queries, h.num_classes) == (64, 10, 150)
    assert (h.pixel_decoder.num_heads, h.pixel_decoder.ffn_channels) == (4, 128)
    assert (h.decoder.num_heads, h.decoder.ffn_channels, h.decoder.num_layers) == (8, 128, 9)
    assert h.pixel_decoder.float32 and cfg.dataset == "ade20k"


def test_bf16_autocast_keeps_the_pixel_decoder_in_float32(model: torch.nn.Module) -> None:
    """Meta's mixed precision: the ViT, adapter and transformer decoder autocast, the pixel
    decoder computes in float32 from float32 copies of the adapter's maps."""
    seen = {}
    decoder = model.decode_head.pixel_decoder
    hook = decoder.register_forward_hook(lambda _m, args, out: seen.update(inp=args[0], out=out))
    crop = torch.randn(1, 3, 64, 96)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(crop)
    finally:
        hook.remove()
    mask_features, memories = seen["out"]
    assert mask_features.dtype == torch.float32
    assert all(m.dtype == torch.float32 for m in memories)
    with torch.no_grad():
        again, _ = decoder([f.float() for f in seen["inp"]])
    assert torch.equal(again, mask_features)


def test_frozen_vit_stays_in_eval_mode_without_gradients() -> None:
    model = build_model(SET / "config.json")
    model.backbone.freeze_vit()
    model.train()
    assert not model.backbone.blocks[0].training and not model.backbone.rope_embed.training
    assert model.backbone.spm.training and model.decode_head.training
    frozen = dict(model.backbone.vit_parameters())
    assert frozen and not any(p.requires_grad for p in frozen.values())
    assert "blocks.0.attn.qkv.weight" in frozen and "level_embed" not in frozen
    scores = model(torch.randn(2, 3, 64, 64))
    scores.sum().backward()
    assert all(p.grad is None for p in frozen.values())
    assert model.backbone.spm.fc1.weight.grad is not None


def test_rope_rescales_coordinates_only_in_training() -> None:
    rope = build_model("dinov3-vits16-adapter-m2f", device="cpu").backbone.rope_embed
    rope.eval()
    first, second = rope(4, 6), rope(4, 6)
    assert torch.equal(first[0], second[0])
    rope.train()
    torch.manual_seed(0)
    assert not torch.equal(rope(4, 6)[0], first[0])


@pytest.mark.parametrize("name", ["ade20k-dinov3-vit7b16-adapter-m2f-896",
                                  "dinov3-vitl16-adapter-m2f"])
def test_gated_weights_say_where_to_request_them(name: str) -> None:
    with pytest.raises(CheckpointError) as error:
        fetch_weights(get_preset(name))
    message = str(error.value)
    assert "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/" in message
    assert "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth" in message or \
        "dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth" in message

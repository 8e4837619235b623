"""DINOv3 beyond parity: configuration checks, Meta's mixed precision, the frozen ViT, gated
weights."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vitadapter import build_model, load_checkpoint
from vitadapter.config import BackboneConfig, ModelConfig, config_from_dict, get_preset
from vitadapter.config.training import TrainSettings
from vitadapter.errors import CheckpointError, ConfigError, TrainingError
from vitadapter.files import sha256_of
from vitadapter.training.trainer import Trainer
from vitadapter.training.work_dir import LATEST, LOG_FILE
from vitadapter.weights.download import fetch_weights
from vitadapter.weights.safetensors import load_safetensors

from .conftest import REFERENCE
from .test_training_run import settings

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


# -- fine-tuning: the adapter and head on a frozen ViT ----------------------------------------

@pytest.fixture(scope="module")
def frozen_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """Eight steps of the tiny DINOv3 segmentor on the shapes data, the ViT frozen (the
    recipe's default) with Meta's backbone file; one save at step 4 and one at the end."""
    work = tmp_path_factory.mktemp("dinov3") / "work"
    with Trainer(dinov3_settings(data_root, work)) as trainer:
        trainer.run()
    return trainer


def dinov3_settings(root: Path, work: Path, **changes: object) -> TrainSettings:
    return settings(root, work, **{"model": str(SET / "config.json"), "init": None,
                                   "backbone_checkpoint": str(SET / "backbone.pth"),
                                   "save_interval": 4, "drop_path": 0.0, **changes})


def test_frozen_vit_stays_bit_identical_while_the_head_learns(frozen_run: Trainer) -> None:
    hub = torch.load(SET / "backbone.pth", weights_only=True)
    state = frozen_run.model.backbone.state_dict()
    assert all(torch.equal(state[key], value) for key, value in hub.items())
    records = [json.loads(line) for line in (frozen_run.work_dir / LOG_FILE).read_text()
               .splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses
    names = {n for g in frozen_run.optimizer.param_groups for n in g["param_names"]}
    assert not any(n.startswith(("backbone.blocks.", "backbone.patch_embed")) for n in names)
    # Checkpoints hold the trained tensors only; the ViT comes from Meta's file.
    saved, _ = load_safetensors(frozen_run.work_dir / LATEST)
    assert not any(f"backbone.{k}" in saved for k in hub)
    assert "backbone.interactions.0.extractor.attn.value_proj.weight" in saved


def test_resume_reads_the_same_backbone_file_again(frozen_run: Trainer, data_root: Path,
                                                    tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(frozen_run.work_dir, work)
    with pytest.raises(TrainingError, match="pass the --backbone-checkpoint"):
        Trainer(dinov3_settings(data_root, work, resume=True, backbone_checkpoint=None))
    other = tmp_path / "other.pth"
    hub = torch.load(SET / "backbone.pth", weights_only=True)
    torch.save({**hub, "norm.bias": hub["norm.bias"] + 1}, other)
    with pytest.raises(TrainingError, match="not the file this run started from"):
        Trainer(dinov3_settings(data_root, work, resume=True, backbone_checkpoint=str(other)))
    with Trainer(dinov3_settings(data_root, work, resume=True, iters=9)) as resumed:
        assert resumed.iteration == 8
        resumed.run()
    assert resumed.iteration == 9


def test_a_frozen_vit_needs_its_weights(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="give its weights with --backbone-checkpoint"):
        Trainer(dinov3_settings(data_root, tmp_path / "w", backbone_checkpoint=None))
    with pytest.raises(CheckpointError, match="is not a backbone file"):
        Trainer(dinov3_settings(data_root, tmp_path / "w2",
                                backbone_checkpoint=str(REFERENCE / "checkpoint.pth")))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in torch.load(SET / "backbone.pth", weights_only=True).items()
                if k != "norm.bias"}, partial)
    with pytest.raises(TrainingError, match=r"does not fit the model's dinov3 ViT \(missing: "
                                            r"backbone.norm.bias; unexpected: none\)"):
        Trainer(dinov3_settings(data_root, tmp_path / "w3", backbone_checkpoint=str(partial)))


def test_unfrozen_vit_trains_with_layer_wise_decay(data_root: Path, tmp_path: Path) -> None:
    with Trainer(dinov3_settings(data_root, tmp_path / "w", iters=1,
                                 freeze_backbone=False)) as trainer:
        before = trainer.model.backbone.blocks[0].attn.qkv.weight.detach().clone()
        trainer.run()
    groups = {g["group_name"]: g for g in trainer.optimizer.param_groups}
    depth = trainer.config.backbone.depth
    assert groups["layer_1_decay"]["lr_scale"] == pytest.approx(0.9 ** depth)
    assert "backbone.blocks.0.attn.qkv.weight" in groups["layer_1_decay"]["param_names"]
    assert not torch.equal(trainer.model.backbone.blocks[0].attn.qkv.weight, before)
    saved, _ = load_safetensors(trainer.work_dir / LATEST)
    assert "backbone.blocks.0.attn.qkv.weight" in saved  # a trained ViT is saved


def test_bf16_frozen_vit_and_saving_it_on_request(data_root: Path, tmp_path: Path) -> None:
    with Trainer(dinov3_settings(data_root, tmp_path / "w", iters=1, backbone_precision="bf16",
                                 save_backbone=True)) as trainer:
        trainer.run()
    vit = dict(trainer.model.backbone.vit_parameters())
    assert all(p.dtype == torch.bfloat16 for p in vit.values())
    assert trainer.model.backbone.spm.fc1.weight.dtype == torch.float32
    assert trainer.model.backbone.rope_embed.periods.dtype == torch.float32
    saved, _ = load_safetensors(trainer.work_dir / LATEST)
    assert saved["backbone.blocks.0.attn.qkv.weight"].dtype == torch.bfloat16
    with pytest.raises(TrainingError, match="only for a frozen backbone"):
        Trainer(dinov3_settings(data_root, tmp_path / "w2", backbone_precision="bf16",
                                freeze_backbone=False))


def test_train_cli_takes_the_backbone_flags(data_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from vitadapter.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--backbone-checkpoint", "--freeze-backbone, --no-freeze-backbone",
                 "--save-backbone", "--backbone-precision {fp32,bf16}"):
        assert flag in help_text
    assert "default: the model's recipe, 2e-05 official, 0.0001 DINOv3" in help_text
    assert main(["-q", "train", "--config", str(SET / "config.json"), "--data-root",
                 str(data_root), "--dataset", "custom", "--work-dir", str(tmp_path / "w"),
                 "--backbone-checkpoint", str(SET / "backbone.pth"), "--iters", "1",
                 "--crop", "64", "--img-scale", "64", "64", "--num-points", "64",
                 "--eval-interval", "0", "--num-workers", "0", "--warmup-iters", "0"]) == 0
    state = torch.load(next((tmp_path / "w" / "checkpoints").glob("iter_*")) / "train_state.pt",
                       weights_only=True)
    assert state["backbone_sha256"] == sha256_of(SET / "backbone.pth")
    assert state["settings"]["freeze_backbone"] is None  # the recipe's (frozen)

"""Reduced-precision modes of the PyTorch backend."""

from __future__ import annotations

import warnings

import pytest
import torch

from vitadapter import Segmenter
from vitadapter.backends import precision
from vitadapter.backends.precision import check_precision
from vitadapter.cli import main
from vitadapter.errors import ConfigError

from .conftest import CHECKPOINT, PHOTO, set_config


@pytest.fixture(scope="module")
def fp32_labels(segmenter):
    return segmenter(str(PHOTO)).label_map


def test_unknown_or_unsupported_precision_is_refused():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of fp32, bf16"):
        check_precision("fp8", "cpu")
    with pytest.raises(ConfigError, match=r"'fp16' needs a CUDA device .* use 'bf16' or 'int8'"):
        check_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match=r"'int8' .* runs on the CPU only"):
        check_precision("int8", "cuda")


def test_cpu_bf16_warns_without_amx(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="'bf16' on this CPU .* slower than fp32"):
        assert check_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_precision("bf16", "cpu") == "bf16"


def test_int8_quantises_only_the_chosen_groups(tiny_models):
    model = tiny_models["tiny-upstream"]
    quantised = precision.prepare_model(model, "int8", int8_groups=["vit-mlp"])
    block = quantised.backbone.blocks[0]
    assert type(block.mlp.fc1).__module__.startswith("torch.ao.nn.quantized")
    assert isinstance(block.attn.qkv, torch.nn.Linear)
    assert isinstance(quantised.decode_head.cls_embed, torch.nn.Linear)
    with pytest.raises(ConfigError, match=r"unknown int8 group.* vit-mlps; choose from"):
        precision.prepare_model(model, "int8", int8_groups=["vit-mlps"])


def test_int8_quantises_a_copy_and_mostly_agrees(tiny_models, fp32_labels):
    model = tiny_models["tiny-upstream"]
    seg = Segmenter.from_model(model, precision="int8")
    block = seg.runner.model.backbone.blocks[0]
    assert type(block.mlp.fc1).__module__.startswith("torch.ao.nn.quantized")
    assert isinstance(block.attn.qkv, torch.nn.Linear)  # by default the ViT MLPs only
    assert isinstance(model.backbone.blocks[0].mlp.fc1, torch.nn.Linear)  # caller's model kept
    labels = seg(str(PHOTO)).label_map
    agreement = (labels == fp32_labels).mean()
    # This random tiny model's scores are nearly flat, so any change flips labels; exactly 1.0
    # would mean nothing was quantised.
    assert 0.75 < agreement < 1.0


@pytest.mark.filterwarnings("ignore:precision 'bf16' on this CPU")
def test_bf16_autocast_on_cpu_mostly_agrees(tiny_models, fp32_labels):
    seg = Segmenter.from_model(tiny_models["tiny-upstream"], precision="bf16")
    agreement = (seg(str(PHOTO)).label_map == fp32_labels).mean()
    assert 0.9 < agreement < 1.0  # measured 0.951


def test_cli_refuses_fp16_on_cpu(tmp_path, capsys):
    code = main(["-q", "segment", str(PHOTO), "--config", str(set_config("tiny-upstream")),
                 "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--precision", "fp16"])
    assert code == 2
    assert "precision 'fp16' needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

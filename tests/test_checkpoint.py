from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import pytest
import torch

from vitadapter import (
    CheckpointError,
    build_model,
    convert_to_safetensors,
    load_checkpoint,
    read_checkpoint,
)
from vitadapter.cli import main as cli_main
from vitadapter.config import BackboneConfig, HeadConfig, InferenceConfig

from .conftest import CHECKPOINT, set_config

CROP = torch.linspace(-2, 2, 3 * 128 * 128).reshape(1, 3, 128, 128)


class Payload:
    """A class instance inside a pickle: exactly what weights_only loading must refuse."""


def tiny_model():
    return build_model(set_config("tiny-upstream"), device="meta")


def scores_of(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(CROP)


@pytest.fixture(scope="module")
def reference_scores():
    model = tiny_model()
    load_checkpoint(model, CHECKPOINT)
    return scores_of(model)


@pytest.fixture(scope="module")
def state_dict():
    return read_checkpoint(CHECKPOINT).state_dict


def test_release_format_loads_with_meta_classes():
    model = tiny_model()
    ckpt = load_checkpoint(model, CHECKPOINT)
    assert ckpt.classes[:3] == ["person", "bicycle", "car"] and len(ckpt.classes) == 171
    assert model.classes == ckpt.classes
    assert model.palette[0] == [0, 192, 64]
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module_prefix", "model_key"])
def test_wrappings_load_to_identical_outputs(tmp_path, state_dict, reference_scores, wrap):
    sd = {("module." + k if wrap == "module_prefix" else k): v for k, v in state_dict.items()}
    obj = {"bare": sd, "module_prefix": {"state_dict": sd}, "state_dict": {"state_dict": sd},
           "model_key": {"model": sd}}[wrap]
    path = tmp_path / "pytorch_model.pt"
    torch.save(obj, path)
    model = tiny_model()
    ckpt = load_checkpoint(model, path)
    assert ckpt.classes is None
    assert torch.equal(scores_of(model), reference_scores)


def test_release_zip_and_real_model(tmp_path, reference_scores):
    archive = tmp_path / "mask2former_release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(CHECKPOINT, "mask2former_release.pth.tar")
    model = build_model(set_config("tiny-upstream"))  # real random weights, copied over
    load_checkpoint(model, archive)
    assert torch.equal(scores_of(model), reference_scores)


def test_stray_conv_seg_is_ignored_with_notice(tmp_path, state_dict, caplog):
    sd = dict(state_dict)
    sd["decode_head.conv_seg.weight"] = torch.zeros(171, 64, 1, 1)
    sd["decode_head.conv_seg.bias"] = torch.zeros(171)
    path = tmp_path / "old_release.pth"
    torch.save({"state_dict": sd}, path)
    with caplog.at_level(logging.INFO, logger="vitadapter"):
        ckpt = load_checkpoint(tiny_model(), path)
    assert ckpt.ignored_keys == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    assert "ignoring 2 unused key(s) of old releases" in caplog.text


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(CHECKPOINT.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_model(), path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a readable checkpoint (corrupt, truncated, or not "
                              "a PyTorch file)")


def test_zip_without_checkpoint(tmp_path):
    archive = tmp_path / "weights.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("README.txt", "nothing here")
    with pytest.raises(CheckpointError, match=r"weights\.zip: the zip holds no checkpoint "
                                              r"\(\.pth/\.pth\.tar/\.pt\); contents: "
                                              r"\['README\.txt'\]"):
        load_checkpoint(tiny_model(), archive)


def test_pickled_object_is_refused_unless_trusted(tmp_path, state_dict):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state_dict, "hook": Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_model(), path)
    message = str(err.value)
    assert "\n" not in message
    assert "refusing to unpickle tests.test_checkpoint.Payload" in message
    assert "--trust-checkpoint" in message
    load_checkpoint(tiny_model(), path, trust_checkpoint=True)


def test_numpy_scalars_in_meta_are_plain_data(tmp_path, state_dict):
    import numpy as np

    path = tmp_path / "meta.pth"
    torch.save({"state_dict": state_dict, "meta": {"seed": np.int64(7), "iter": np.array([1])}},
               path)
    load_checkpoint(tiny_model(), path)


@pytest.mark.parametrize(("change", "cause"), [
    ({"backbone": BackboneConfig(img_size=160, embed_dim=64, depth=4, num_heads=4,
                                 conv_inplane=16, deform_num_heads=4,
                                 interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3))),
      "inference": InferenceConfig(crop_size=(160, 160))},
     "the checkpoint was trained for 128px crops, the model is built for 160px"),
    ({"head_classes": 150}, "the checkpoint predicts 171 classes, the model 150"),
])
def test_checkpoint_of_another_preset(change, cause):
    cfg = build_model(set_config("tiny-upstream"), device="meta").config
    if "head_classes" in change:
        head = HeadConfig(**{**cfg.head.__dict__, "num_things_classes": 100,
                             "num_stuff_classes": 50})
        cfg = cfg.replace(head=head)
    else:
        cfg = cfg.replace(**change)
    with pytest.raises(CheckpointError, match=rf"(?s)does not fit this model:.*shape mismatch:"
                                              rf".*likely cause: {cause}"):
        load_checkpoint(build_model(cfg, device="meta"), CHECKPOINT)


def test_missing_and_unexpected_keys_are_listed(tmp_path, state_dict):
    sd = dict(state_dict)
    del sd["decode_head.cls_embed.bias"]
    sd["decode_head.extra.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"(?s)missing: decode_head\.cls_embed\.bias.*"
                                              r"unexpected: decode_head\.extra\.weight"):
        load_checkpoint(tiny_model(), path)
    model = build_model(set_config("tiny-upstream"))
    load_checkpoint(model, path, strict=False)


def test_wrong_relative_position_index_is_refused(tmp_path, state_dict):
    sd = dict(state_dict)
    sd["backbone.blocks.0.attn.relative_position_index"] = torch.zeros(65, 65, dtype=torch.long)
    path = tmp_path / "index.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="relative_position_index differs from the index "
                                              r"of a \(8, 8\) window"):
        load_checkpoint(tiny_model(), path)


def test_state_dict_round_trip_includes_the_index(tmp_path, reference_scores):
    model = tiny_model()
    load_checkpoint(model, CHECKPOINT)
    sd = model.state_dict()
    assert sd["backbone.blocks.3.attn.relative_position_index"].shape == (65, 65)
    path = tmp_path / "ours.pth"
    torch.save(sd, path)
    again = tiny_model()
    load_checkpoint(again, path)
    assert torch.equal(scores_of(again), reference_scores)


def test_safetensors_conversion(tmp_path, reference_scores):
    dst = tmp_path / "tiny.safetensors"
    assert cli_main(["convert", str(CHECKPOINT), str(dst)]) == 0
    model = tiny_model()
    ckpt = load_checkpoint(model, dst)
    assert len(ckpt.classes) == 171 and ckpt.palette[1] == [0, 192, 64]
    assert torch.equal(scores_of(model), reference_scores)
    assert not any(k.endswith("relative_position_index") for k in ckpt.state_dict)


def test_safetensors_compatible_with_the_reference_library(tmp_path, state_dict):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    ours = tmp_path / "ours.safetensors"
    convert_to_safetensors(CHECKPOINT, ours)
    theirs = safetensors_torch.load_file(str(ours))
    assert set(theirs) == set(state_dict)
    assert all(torch.equal(theirs[k], state_dict[k]) for k in theirs)
    written = tmp_path / "theirs.safetensors"
    mixed = {"a": torch.arange(5, dtype=torch.int8), "b": torch.randn(3, 2),
             "c": torch.randn(4).to(torch.bfloat16)}
    safetensors_torch.save_file(mixed, str(written))
    back = read_checkpoint(written).state_dict
    assert all(torch.equal(back[k], mixed[k]) for k in mixed)


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    dst = tmp_path / "w.safetensors"
    dst.write_bytes(b"precious")
    assert cli_main(["convert", str(CHECKPOINT), str(dst)]) == 2
    assert "already exists; choose another name or pass --force" in capsys.readouterr().err
    assert dst.read_bytes() == b"precious"
    assert cli_main(["convert", str(CHECKPOINT), str(tmp_path / "w.pth")]) == 2
    assert "destination must end in .safetensors" in capsys.readouterr().err


def test_truncated_safetensors(tmp_path):
    dst = convert_to_safetensors(CHECKPOINT, tmp_path / "w.safetensors")
    dst.write_bytes(dst.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="lies outside the file"):
        read_checkpoint(dst)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tiny_model(), tmp_path / "absent.pth")


CHANGED_UNDER_US = """
import os, sys, torch
from vitadapter import build_model, load_checkpoint
from vitadapter.config.parse import load_config_file
from vitadapter.weights.checkpoint import convert_to_safetensors

config, checkpoint, copy = sys.argv[1:]
convert_to_safetensors(checkpoint, copy)
model = build_model(load_config_file(config), device="meta")
load_checkpoint(model, copy)
with open(copy, "r+b") as f:  # rewritten in place, then truncated, while the model lives
    f.seek(4096)
    f.write(b"\\xff" * 4096)
    f.truncate(8192)
reference = build_model(load_config_file(config), device="meta")
load_checkpoint(reference, checkpoint)
same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                              reference.state_dict().values(), strict=True))
print("same" if same else "changed", flush=True)
"""


def test_weights_survive_the_file_changing_under_them(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", CHANGED_UNDER_US, str(set_config("tiny-upstream")),
         str(CHECKPOINT), str(tmp_path / "copy.safetensors")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert (done.returncode, done.stdout.strip()) == (0, "same"), done.stderr[-2000:]

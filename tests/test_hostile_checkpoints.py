"""Crafted checkpoints: safetensors headers and ``meta`` entries that must be refused with a
CheckpointError (never a traceback from deep inside, never silently aliased tensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitadapter.errors import CheckpointError
from vitadapter.weights import safetensors
from vitadapter.weights.checkpoint import read_checkpoint
from vitadapter.weights.safetensors import load_safetensors, save_safetensors

GOOD = {"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b.bias": {"dtype": "F32", "shape": [4], "data_offsets": [24, 40]}}


def crafted(path: Path, header: object, data: bytes = bytes(40), raw: bytes | None = None
            ) -> Path:
    blob = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


def entry(**changes: object) -> dict:
    return {**GOOD, "a.weight": {**GOOD["a.weight"], **changes}}


@pytest.mark.parametrize(("header", "message"), [
    (entry(shape=[-2, -3]), r"tensor 'a.weight' has the shape \[-2, -3\]: expected up to 16 "
                            r"sizes of 0..1099511627776"),
    (entry(shape=[2**62, 2**62]), "has the shape"),
    (entry(shape=[2, 3.0]), "has the shape"),
    (entry(shape=[True, 6]), "has the shape"),
    (entry(shape="23"), "has the shape"),
    (entry(shape=[0, 2**62, 2**62]), "has the shape"),
    (entry(data_offsets=[-8, 16]), "lies outside the file"),
    (entry(data_offsets=[0, 2**70]), "lies outside the file"),
    (entry(shape=[3, 3]), r"of shape \[3, 3\] \(F32\) needs 36 bytes, its data_offsets give 24"),
    ({**GOOD, "b.bias": {**GOOD["b.bias"], "data_offsets": [16, 32]}},
     r"tensors 'a.weight' and 'b.bias' overlap"),
    ({**GOOD, "__metadata__": ["classes"]}, "__metadata__ must map names to strings"),
    ({**GOOD, "__metadata__": "x"}, "__metadata__ must map names to strings"),
    ({**GOOD, "__metadata__": {"classes": ["a"]}}, "__metadata__ must map names to strings"),
    ([1, 2], r"not a JSON object"),
    (entry(dtype="F128"), "bad header entry for 'a.weight'"),
])
def test_crafted_headers_are_refused_before_the_data_is_read(tmp_path, monkeypatch, header,
                                                             message):
    def never(*args: object) -> None:
        raise AssertionError("read the data of a file whose header is bad")

    monkeypatch.setattr(safetensors, "_read_private", never)
    with pytest.raises(CheckpointError, match=message):
        load_safetensors(crafted(tmp_path / "x.safetensors", header))


@pytest.mark.parametrize(("raw", "message"), [
    (b"[" * 50_000 + b"]" * 50_000, r"nested too deeply"),
    (json.dumps(entry(shape=[2, 3])).replace("[2, 3]", "[2, Infinity]").encode(),
     "corrupt safetensors header"),
    (json.dumps(entry(shape=[2, 3])).replace("[2, 3]", "[2, NaN]").encode(),
     "corrupt safetensors header"),
])
def test_header_json_that_is_no_header(tmp_path, raw, message):
    with pytest.raises(CheckpointError, match=message):
        load_safetensors(crafted(tmp_path / "x.safetensors", None, raw=raw))


def test_a_valid_file_still_loads_with_empty_tensors(tmp_path):
    header = {**GOOD, "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [24, 24]},
              "__metadata__": {"format": "pt"}}
    tensors, metadata = load_safetensors(crafted(tmp_path / "x.safetensors", header))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "a.weight": (2, 3), "b.bias": (4,), "empty": (0, 5)}
    assert metadata == {"format": "pt"}
    save_safetensors(tensors, tmp_path / "y.safetensors")
    assert load_safetensors(tmp_path / "y.safetensors")[0].keys() == tensors.keys()


def test_loaded_tensors_are_aligned_as_pytorch_allocates(tmp_path):
    """Each tensor in memory of its own, 64-byte aligned wherever the file put it: oneDNN's
    kernels round differently at other alignments."""
    tensors = {"a": torch.arange(3.0), "b": torch.randn(5, 7), "c": torch.arange(3),
               "d": torch.randn(2, 3, dtype=torch.float16)}
    save_safetensors(tensors, tmp_path / "x.safetensors")
    loaded, _ = load_safetensors(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys()
    for name, tensor in loaded.items():
        assert tensor.data_ptr() % 64 == 0, name
        assert torch.equal(tensor, tensors[name])


@pytest.mark.parametrize(("meta", "message"), [
    ({"CLASSES": 5}, r"its meta CLASSES is int 5, not a list of class names"),
    ({"CLASSES": "abc"}, r"its meta CLASSES is str 'abc', not a list of class names"),
    ({"CLASSES": ["a", 2]}, "not a list of class names"),
    ({"PALETTE": "red"}, r"its meta PALETTE is str 'red', not a list of \[r, g, b\] colours"),
    ({"PALETTE": ["123", "456"]}, "not a list of"),
    ({"PALETTE": [[0, 0, 0], [1, 2, 300]]}, "not a list of"),
    ({"PALETTE": [[0, 0]]}, "not a list of"),
])
def test_bad_meta_classes_and_palettes_are_refused(tmp_path, meta, message):
    path = tmp_path / "x.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": meta}, path)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_bad_safetensors_metadata_classes_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_safetensors({"w": torch.zeros(2)}, path, {"classes": "5"})
    with pytest.raises(CheckpointError, match="its meta CLASSES is int 5"):
        read_checkpoint(path)
    save_safetensors({"w": torch.zeros(2)}, path, {"classes": '["a", "b"]',
                                                    "palette": "[[1, 2, 3], [4, 5, 6]]"})
    ckpt = read_checkpoint(path)
    assert (ckpt.classes, ckpt.palette) == (["a", "b"], [[1, 2, 3], [4, 5, 6]])


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path, monkeypatch):
    import zipfile

    import vitadapter.weights.checkpoint as checkpoint

    bomb = tmp_path / "release.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.pth", bytes(24 * 2**20))  # 24 MB of zeros in about 24 KB
    assert bomb.stat().st_size < 2**20

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted")

    monkeypatch.setattr(checkpoint.shutil, "copyfileobj", never)
    with pytest.raises(CheckpointError, match=r"release.zip: model.pth would extract to 24 MB "
                                              r"from 0.0 MB compressed, more than a checkpoint "
                                              r"can be .*nothing was extracted"):
        read_checkpoint(bomb)


@pytest.mark.parametrize(("config", "checkpoint", "theirs", "ours"), [
    ("tiny-upstream", "tiny-vit-adapter-upernet/checkpoint.pth", "UperNet", "Mask2Former"),
    ("tiny-vit-adapter-upernet", "checkpoint.pth", "Mask2Former", "UperNet"),
])
def test_a_checkpoint_of_the_other_head_says_to_pass_its_config(config, checkpoint, theirs,
                                                                ours):
    from vitadapter import build_model, load_checkpoint

    from .conftest import REFERENCE, set_config

    model = build_model(set_config(config), device="meta")
    with pytest.raises(CheckpointError, match=(
            f"likely cause: this is a {theirs} checkpoint and the model is {ours}: pass the "
            f"config it was trained with \\(a {theirs} preset with --model, or a training "
            "work dir's config.json with --config\\)")):
        load_checkpoint(model, REFERENCE / checkpoint)

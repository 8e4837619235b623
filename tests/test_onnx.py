"""ONNX export and the onnxruntime backend: parity with PyTorch, self-describing files, running
without torch, the command line and the error cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from vitadapter import Segmenter, build_model
from vitadapter.backends.onnx import OnnxRunner
from vitadapter.backends.onnx_export import export_onnx, external_data_path, package, verify_export
from vitadapter.backends.onnx_metadata import FORMAT, METADATA_KEYS
from vitadapter.cli import main
from vitadapter.errors import ExportError, MissingDependencyError, OnnxModelError
from vitadapter.ops import reference_path

from .conftest import CHECKPOINT, PHOTO, assert_official_labels, expected, set_config


@pytest.fixture(scope="session")  # once: the session-scoped reference_set reorders tests
def exported(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Each reference model exported once."""
    folder = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(model, folder / f"{name}.onnx", weights="checkpoint.pth")
            for name, model in tiny_models.items()}


def crops(count: int) -> np.ndarray:
    """``count`` 128x128 windows of the reference photo's normalised 128x192 input: random
    noise gives near-zero mask logits, where Mask2Former's masked attention flips with the last
    bits of float32 sums (the fast path then differs by percents depending on the thread
    count); the photo's windows keep clear of that (the sets' recorded margins)."""
    image = expected("tiny-upstream")["img"][0]
    return np.stack([image[:, :, x:x + 128] for x in np.linspace(0, 64, count).astype(int)])


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


def test_scores_equal_pytorch(reference_set, tiny_models, exported):
    batch = crops(2)  # exported with batch 1: the batch axis is dynamic
    scores = OnnxRunner.load(exported[reference_set])(batch)
    with torch.inference_mode():
        default = tiny_models[reference_set](torch.from_numpy(batch)).numpy()
        with reference_path():
            reference = tiny_models[reference_set](torch.from_numpy(batch)).numpy()
    assert scores.shape == (2, 171, 32, 32) and scores.dtype == np.float32
    assert relative_error(scores, reference) < 1e-4
    assert relative_error(scores, default) < 1e-4
    single = OnnxRunner.load(exported[reference_set])(batch[1:])
    assert relative_error(single, reference[1:]) < 1e-4


def test_label_map_equals_pytorch_backend(reference_set, segmenters, exported):
    onnx_result = Segmenter.from_onnx(exported[reference_set], batch_windows=2)(PHOTO)
    torch_result = segmenters[reference_set](PHOTO)
    tie = expected(reference_set)["label_map_tie"]
    assert not ((onnx_result.label_map != torch_result.label_map) & ~tie).any()
    assert_official_labels(onnx_result.label_map, reference_set)
    assert abs(onnx_result.pixel_count - torch_result.pixel_count).sum() <= 2 * expected(
        reference_set)["label_map_tie"].sum()
    np.testing.assert_allclose(onnx_result.confidence, torch_result.confidence, atol=1e-5)


def test_file_describes_itself(tiny_models, segmenter, exported):
    path = exported["tiny-upstream"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(METADATA_KEYS) <= set(props)
    assert props["vitadapter.format"] == FORMAT
    assert props["vitadapter.weights"] == "checkpoint.pth"
    assert json.loads(props["vitadapter.num_classes"]) == 171
    assert json.loads(props["vitadapter.crop_size"]) == [128, 128]
    assert json.loads(props["vitadapter.stride"]) == [64, 64]
    assert json.loads(props["vitadapter.preprocessing"]) == {
        "pipeline": "mmseg", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
        "to_rgb": True, "img_scale": [512, 128], "size_divisor": 32, "short_side": None}
    assert json.loads(props["vitadapter.classes"])[:2] == ["person", "bicycle"]
    seg = Segmenter.from_onnx(path)
    assert seg.config == tiny_models["tiny-upstream"].config
    assert seg.class_names == segmenter.class_names
    assert np.array_equal(seg.palette, segmenter.palette)
    assert seg.device == "onnxruntime:CPUExecutionProvider"
    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert opsets[""] == 17
    assert "GridSample" in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_weights_are_stored_once(tiny_models, exported):
    """The relative position bias stays a gather from each block's table: folded into
    constants it would cost (heads, N+1, N+1) floats per block (15 GB at 896)."""
    initializers = onnx.load(str(exported["tiny-upstream"])).graph.initializer
    stored = sum(len(t.raw_data) for t in initializers)
    params = sum(p.numel() * 4 for p in tiny_models["tiny-upstream"].parameters())
    index = 65 * 65 * 8  # one int64 relative position index, shared by the blocks
    assert params <= stored <= params + index + 16 * 2**10
    assert not [t.name for t in initializers if list(t.dims)[-2:] == [65, 65]
                and t.data_type == onnx.TensorProto.FLOAT]


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any "import torch" now fails
sys.modules["onnx"] = None   # the runtime does not need the exporter's package either
import numpy as np
from PIL import Image
from vitadapter import Segmenter
from vitadapter.cli import main

result = Segmenter.from_onnx({onnx!r})({photo!r})
saved = np.load({labels!r})
assert not ((result.label_map != saved["label_map"]) & ~saved["label_map_tie"]).any()
assert main(["-q", "segment", {photo!r}, "--onnx", {onnx!r}, "--out", {out!r}]) == 0
assert np.array_equal(np.asarray(Image.open({out!r} + "/input_labels.png")), result.label_map)
assert not [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m]]
print("ok")
"""


def test_runs_without_torch(exported, tmp_path):
    script = NO_TORCH.format(onnx=str(exported["tiny-modelscope"]), photo=str(PHOTO),
                             labels=str(set_config("tiny-modelscope").parent / "expected.npz"),
                             out=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_cli_export_then_segment(tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    assert main(["-q", "export-onnx", "--config", str(set_config("tiny-modelscope")),
                 "--checkpoint", str(CHECKPOINT), "--out", str(model), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed
    error = float(printed.split("max difference ")[1].split()[0])
    assert 0 <= error < 1e-5
    assert model.is_file() and not external_data_path(model).exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name != "tiny.onnx"]  # no temp left
    out = tmp_path / "out"
    assert main(["-q", "segment", str(PHOTO), "--onnx", str(model), "--out", str(out)]) == 0
    labels = np.asarray(Image.open(out / "input_labels.png"))
    assert_official_labels(labels, "tiny-modelscope")
    report = json.loads((out / "input.json").read_text())
    assert report["model"] == "tiny-modelscope" and report["behaviour"] == "modelscope"
    assert report["device"] == "onnxruntime:CPUExecutionProvider"


def test_cli_behaviour_switch_and_random_weights(tmp_path):
    model = tmp_path / "random.onnx"
    assert main(["-q", "export-onnx", "--config", str(set_config("tiny-upstream")),
                 "--allow-random", "--behaviour", "modelscope", "--out", str(model)]) == 0
    runner = OnnxRunner.load(model)
    assert runner.metadata.weights == "random"
    assert runner.info.config.behaviour == "modelscope"


def test_large_models_keep_weights_in_a_data_file(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr("vitadapter.backends.onnx_export.EXTERNAL_DATA_BYTES", 0)
    model = tiny_models["tiny-upstream"]
    path = export_onnx(model, tmp_path / "big.onnx")
    data = external_data_path(path)
    assert data.name == "big.onnx.data"
    assert data.stat().st_size > 3 * 2**20 > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    with torch.inference_mode():
        reference = model(torch.from_numpy(crops(1))).numpy()
    assert relative_error(OnnxRunner.load(path)(crops(1)), reference) < 1e-4
    path.unlink()
    with pytest.raises(ExportError, match=r"big\.onnx\.data already exists"):
        export_onnx(model, path)


@pytest.mark.parametrize("limit", [0, None])
def test_per_tensor_weight_files_are_merged(limit, exported, tmp_path, monkeypatch):
    """Over 2 GB the exporter writes one file per tensor; packaging streams them into one
    ``.data`` file (or inline, for a small model) without changing a number."""
    if limit is not None:
        monkeypatch.setattr("vitadapter.backends.onnx_export.EXTERNAL_DATA_BYTES", limit)
    source = onnx.load(str(exported["tiny-upstream"]))
    metadata = {p.key: p.value for p in source.metadata_props}
    traced_dir = tmp_path / "traced"
    traced_dir.mkdir()
    onnx.save_model(source, str(traced_dir / "traced.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(traced_dir.iterdir())) > 100
    # PyTorch's exporter names each tensor's file without a "length" entry.
    traced = onnx.load(str(traced_dir / "traced.onnx"), load_external_data=False)
    for tensor in traced.graph.initializer:
        entries = [(e.key, e.value) for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        for key, value in entries:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    onnx.save_model(traced, str(traced_dir / "traced.onnx"))
    out = tmp_path / "out"
    out.mkdir()
    assert package(traced_dir / "traced.onnx", out / "m.onnx", metadata,
                   "m.onnx.data") is (limit == 0)
    assert sorted(p.name for p in out.iterdir()) == (
        ["m.onnx", "m.onnx.data"] if limit == 0 else ["m.onnx"])
    onnx.checker.check_model(str(out / "m.onnx"))
    batch = crops(1)
    assert np.array_equal(OnnxRunner.load(out / "m.onnx")(batch),
                          OnnxRunner.load(exported["tiny-upstream"])(batch))


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_text("keep me")
    args = ["export-onnx", "--config", str(set_config("tiny-upstream")), "--checkpoint",
            str(CHECKPOINT), "--out", str(target)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert main([*args, "--force"]) == 0
    assert OnnxRunner.load(target).info.config.name == "tiny-upstream"


@pytest.mark.parametrize(("extra", "message"), [
    ([], "give the weights to export with --checkpoint"),
    (["--checkpoint", str(CHECKPOINT), "--opset", "15"], "GridSample, which ONNX has from "
                                                         "opset 16"),
    (["--checkpoint", str(CHECKPOINT), "--opset", "99"], "opset 99 is newer than this "
                                                         "PyTorch's ONNX exporter writes"),
    (["--checkpoint", str(CHECKPOINT), "--crop", "96"],
     "trained for 128px crops, the model is built for 96px"),
])
def test_cli_export_errors(extra, message, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export-onnx", "--config", str(set_config("tiny-upstream")), "--out",
                 str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_segment_onnx_refuses_model_flags(exported, tmp_path, capsys):
    assert main(["segment", str(PHOTO), "--onnx", str(exported["tiny-upstream"]),
                 "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path)]) == 2
    assert "--onnx takes the model from the file; drop --checkpoint" in capsys.readouterr().err


def test_weightless_model_is_refused(tmp_path):
    model = build_model(set_config("tiny-upstream"), device="meta")
    with pytest.raises(ExportError, match="has no weights"):
        export_onnx(model, tmp_path / "m.onnx")


def test_foreign_onnx_files_are_refused(tmp_path):
    foreign = tmp_path / "identity.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["crops"], ["scores"])], "g",
        [onnx.helper.make_tensor_value_info("crops", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(OnnxModelError, match="not exported by `vitadapter export-onnx`"):
        Segmenter.from_onnx(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxModelError, match="onnxruntime cannot load it"):
        Segmenter.from_onnx(garbage)
    with pytest.raises(OnnxModelError, match="not found"):
        Segmenter.from_onnx(tmp_path / "missing.onnx")


def test_missing_packages_are_named(tiny_models, exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'vitadapter\[onnx\]'"):
        Segmenter.from_onnx(exported["tiny-upstream"])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'vitadapter\[export\]'"):
        export_onnx(tiny_models["tiny-upstream"], tmp_path / "m.onnx")



def test_verify_tells_models_apart(tiny_models, exported):
    assert verify_export(tiny_models["tiny-upstream"], exported["tiny-upstream"]) < 1e-5
    assert verify_export(tiny_models["tiny-upstream"], exported["tiny-modelscope"]) > 1e-2


def test_segment_onnx_refuses_a_precision(exported, tmp_path, capsys):
    """The exported file is fp32: asking for another precision is an error, not ignored."""
    assert main(["segment", str(PHOTO), "--onnx", str(exported["tiny-upstream"]),
                 "--precision", "int8", "--out", str(tmp_path)]) == 2
    assert "--onnx takes the model from the file; drop --precision" in capsys.readouterr().err


def test_vit_adapter_upernet_exports_and_matches_pytorch(upernet_models, tmp_path):
    """The plain-ViT adapter (bicubic pos_embed resize) with UperNet (pyramid pooling to bins
    that do not divide the 4x4 map): onnxruntime equals PyTorch, and the Segmenter on the file
    gives the official label map."""
    name = "tiny-vit-adapter-upernet"
    path = export_onnx(upernet_models[name], tmp_path / "vit.onnx", weights="checkpoint.pth")
    batch = crops(2)
    with torch.inference_mode(), reference_path():
        reference = upernet_models[name](torch.from_numpy(batch)).numpy()
    scores = OnnxRunner.load(path)(batch)
    assert scores.shape == (2, 150, 32, 32)
    assert relative_error(scores, reference) < 1e-4
    segmenter = Segmenter.from_onnx(path)
    assert segmenter.config == upernet_models[name].config
    result = segmenter(PHOTO)
    assert_official_labels(result.label_map, name)
    present = result.pixel_count > 0
    assert ((result.confidence[present] > 1 / 150) & (result.confidence[present] <= 1)).all()

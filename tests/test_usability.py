"""What a new user meets first: devices, messages, reprs, the version, JSON that parses."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("device, message", [
    ("cuda", "device 'cuda': CUDA is not available here (no GPU, or this torch was built "
             "without CUDA); use cpu"),
    ("gpu", "device 'gpu': CUDA is not available here"),
    (0, "device 0: CUDA is not available here"),
    ("mps", "device 'mps': MPS (Apple GPU) is not available here; use cpu"),
    ("tpu", "device 'tpu' is not a device: use cpu, cuda, cuda:N, N (a CUDA index) or mps"),
])
def test_unavailable_devices_are_one_clear_line(device, message, monkeypatch):
    import torch

    from vitadapter.backends.torch import resolve_device
    from vitadapter.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as caught:
        resolve_device(device)
    assert str(caught.value).startswith(message)


def test_integers_are_cuda_indices(monkeypatch):
    import torch

    from vitadapter.backends.torch import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device(d) for d in (0, "1", "gpu", "cuda:1", None, "cpu")] == [
        "cuda:0", "cuda:1", "cuda", "cuda:1", "cuda", "cpu"]
    with pytest.raises(ValueError, match="there are 2 CUDA device"):
        resolve_device(2)


def test_scores_that_are_not_finite_stop_the_run_saying_so(tmp_path, monkeypatch, capsys):
    import numpy as np

    import vitadapter.cli.segment
    from vitadapter import Segmenter
    from vitadapter.cli import main

    from .conftest import PHOTO
    from .quick_runner import QuickRunner

    class Broken(QuickRunner):  # e.g. fp16 overflow, or NaN weights
        def __call__(self, crops: np.ndarray) -> np.ndarray:
            scores = super().__call__(crops)
            scores[:, 5] = np.nan
            return scores

    monkeypatch.setattr(vitadapter.cli.segment, "segmenter_from_args",
                        lambda args: Segmenter(Broken()))
    assert main(["-q", "segment", str(PHOTO), "--out", str(tmp_path)]) == 2
    assert ("error: the model produced non-finite scores (NaN or inf): its weights hold NaN or "
            "inf values") in capsys.readouterr().err
    assert not (tmp_path / "input.json").exists()  # no label map of garbage


def test_a_python_config_is_answered_with_how_to_convert_it(tmp_path):
    from vitadapter.config.parse import load_config_file
    from vitadapter.errors import ConfigError

    config = tmp_path / "mask2former_beit_adapter_large_896_80k_cocostuff164k_ss.py"
    config.write_text("_base_ = ['../_base_/models/mask2former_beit.py']\nmodel = dict()\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(config)
    assert str(caught.value) == (
        f"{config} is a Python config: only JSON configs are read (Python is never executed). "
        "Convert it once where mmcv is installed: python -c \"from mmcv import Config; "
        f"Config.fromfile('{config}').dump('{config.with_suffix('.json')}')\" and pass the "
        ".json file")


def test_version(capsys):
    from vitadapter import __version__
    from vitadapter.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"vitadapter {__version__}\n"


def test_short_reprs(segmenter):
    from .conftest import PHOTO

    result = segmenter(PHOTO)
    text = repr(result)
    assert len(text) < 200 and text.startswith("SegmentationResult(260x200, ")
    top = result.summary()[0]
    assert f"{top['name']} {top['share']:.0%}" in text and "model='tiny-upstream'" in text
    assert repr(segmenter) == ("Segmenter('tiny-upstream', TorchRunner on cpu, fp32, 171 classes "
                               "(coco-stuff164k), crop 128x128, tta=False, batch_windows=1)")


def test_quiet_silences_progress_and_the_final_line_prints_once(tmp_path, capsys, monkeypatch):
    from vitadapter.cli import main

    from .conftest import PHOTO
    from .quick_runner import patch_cli

    patch_cli(monkeypatch)
    for argv in (["segment", "-q"], ["-q", "segment"]):
        assert main([*argv, str(PHOTO), "--out", str(tmp_path / "q")]) == 0
        err = capsys.readouterr().err
        assert "|" not in err and err.startswith("segmented 1 image(s)")
    assert main(["segment", str(PHOTO), "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert err.count("1/1 [") == 1 and "100%|" in err


def test_windows_of_a_long_photo_are_noted():
    from vitadapter.stream import segment_stream

    from .conftest import PHOTO
    from .quick_runner import quick_segmenter

    segmenter = quick_segmenter()
    noted: list[tuple[int, int, int]] = []
    results = list(segment_stream(segmenter, [PHOTO, PHOTO],
                                  on_windows=lambda *args: noted.append(args)))
    assert all((r.label_map == segmenter.segment(PHOTO).label_map).all() for _, r in results)
    assert noted == [(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2)]


def test_the_releases_defective_palette_is_replaced(tmp_path):
    import numpy as np

    from vitadapter.backends.base import ModelInfo
    from vitadapter.config.parse import load_config_file
    from vitadapter.pipeline.classes import COCO_STUFF_MMSEG_PALETTE, DATASETS

    from .quick_runner import TINY_CONFIG

    cfg = load_config_file(TINY_CONFIG)
    mmseg = np.asarray(COCO_STUFF_MMSEG_PALETTE, np.uint8)
    assert len(np.unique(mmseg, axis=0)) < 171  # what the release checkpoints carry
    info = ModelInfo.of(cfg, palette=mmseg)
    assert (info.palette == DATASETS["coco-stuff164k"].palette_array()).all()
    assert len(np.unique(info.palette, axis=0)) == 171
    own = np.roll(DATASETS["coco-stuff164k"].palette_array(), 1, axis=0)
    assert (ModelInfo.of(cfg, palette=own).palette == own).all()  # a checkpoint's own colours


def test_image_error_messages(tmp_path, capsys, monkeypatch):
    import io

    from vitadapter.cli import main
    from vitadapter.errors import ImageError
    from vitadapter.pipeline.images import load_image

    from .conftest import PHOTO
    from .quick_runner import patch_cli

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError) as caught:
        load_image(bad)
    assert str(caught.value) == f"{bad}: not a readable image (unknown format, or damaged)"
    with pytest.raises(ImageError, match=r"^the file object: not a readable image"):
        load_image(io.BytesIO(b"garbage"))
    assert load_image(io.BytesIO(PHOTO.read_bytes())).shape == (200, 260, 3)
    patch_cli(monkeypatch)
    assert main(["-q", "segment", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: not a readable image (unknown format, or damaged)\n" in err
    assert err.count(str(bad)) == 2  # once when it fails, once in the summary


def test_checkpoint_error_messages(tmp_path):
    import zipfile

    import torch

    from vitadapter import build_model, load_checkpoint
    from vitadapter.errors import CheckpointError

    from .conftest import CHECKPOINT, set_config

    def message(path) -> str:
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(build_model(set_config("tiny-upstream"), device="meta"), path)
        return str(caught.value)

    text = tmp_path / "notes.pth"
    text.write_text("hello world\n")
    assert message(text) == (f"{text}: not a readable checkpoint (corrupt, truncated, or not "
                             "a PyTorch file)")
    release = tmp_path / "release.zip"
    with zipfile.ZipFile(release, "w") as zf:
        zf.writestr("model.pth", b"garbage" * 10)
    assert message(release) == (f"{release}!model.pth: not a readable checkpoint (corrupt, "
                                "truncated, or not a PyTorch file)")
    state = torch.load(CHECKPOINT, weights_only=True)
    state["state_dict"]["backbone.cls_token"] = state["state_dict"]["backbone.cls_token"].long()
    torch.save(state, tmp_path / "int.pth")
    assert message(tmp_path / "int.pth").splitlines()[1:] == [
        "  integer weights: backbone.cls_token (torch.int64, expected floating point)",
        "  likely cause: the weights were converted to integers (a damaged or wrongly "
        "converted file)"]


def test_malformed_metadata_is_a_clear_error():
    import json

    from vitadapter.backends.base import ModelInfo
    from vitadapter.backends.onnx_metadata import read_metadata, write_metadata
    from vitadapter.config.parse import load_config_file
    from vitadapter.errors import ConfigError, OnnxModelError

    from .quick_runner import TINY_CONFIG

    cfg = load_config_file(TINY_CONFIG)
    with pytest.raises(ConfigError, match=r"palette \(of the checkpoint or model file\) must "
                                          r"be \[r, g, b\] triples of integers 0\.\.255"):
        ModelInfo.of(cfg, palette=[[999, 0, 0]] * 171)
    props = write_metadata(ModelInfo.of(cfg), "weights.pth")
    config = json.loads(props["vitadapter.config"])
    config["inference"]["stride"] = [0, 0]
    cases = {
        "vitadapter.palette": (json.dumps([[999, 0, 0]] * 171), "triples of integers"),
        "vitadapter.config": (json.dumps(config), "'inference.stride' must be at least 1"),
        "vitadapter.classes": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    }
    for key, (value, reason) in cases.items():
        with pytest.raises(OnnxModelError) as caught:
            read_metadata({**props, key: value}, "model.onnx")
        assert str(caught.value).startswith("model.onnx: unreadable vitadapter metadata: ")
        assert reason in str(caught.value), key

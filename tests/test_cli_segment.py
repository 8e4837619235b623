"""``vitadapter segment`` end to end, in-process."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vitadapter.cli import main

from .conftest import CHECKPOINT, PHOTO, assert_official_labels, set_config


def run(*args: str) -> int:
    return main(["-q", "segment", *args, "--checkpoint", str(CHECKPOINT)])


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_label_png_equals_the_official_label_map(reference_set, tmp_path):
    out = tmp_path / "out"
    assert run(str(PHOTO), "--config", str(set_config(reference_set)), "--out", str(out)) == 0
    labels = np.asarray(Image.open(out / "input_labels.png"))
    assert labels.dtype == np.uint8
    assert_official_labels(labels, reference_set)
    report = json.loads((out / "input.json").read_text())
    assert (report["width"], report["height"]) == (260, 200)
    assert report["model"] == reference_set
    assert report["behaviour"] == reference_set.removeprefix("tiny-").replace("upstream",
                                                                              "official")
    assert sum(c["pixels"] for c in report["classes"]) == 52000
    assert abs(sum(c["share"] for c in report["classes"]) - 1) < 1e-4
    color = np.asarray(Image.open(out / "input_color.png"))
    assert color.shape == (200, 260, 3)
    overlay = Image.open(out / "input_overlay.png")
    assert overlay.size[0] > 260  # legend on the right


def test_folder_with_bad_files(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(PHOTO, photos / "a.png")
    shutil.copy(PHOTO, photos / "sub" / "b.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (photos / "notes.txt").write_text("shopping list")
    before = digest(photos)
    out = tmp_path / "out"
    status = run(str(photos), "--config", str(set_config("tiny-upstream")), "--out", str(out))
    err = capsys.readouterr().err
    assert status == 1
    assert "broken.jpg: not a readable image" in err
    assert "segmented 2 image(s)" in err and "1 failed" in err
    assert (out / "a_labels.png").is_file() and (out / "sub" / "b_labels.png").is_file()
    assert not (out / "broken_labels.png").exists()
    assert digest(photos) == before


def test_skipped_non_images_are_reported(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "a.png")
    (photos / "notes.txt").write_text("shopping list")
    with caplog.at_level("INFO"):
        assert main(["segment", str(photos), "--config", str(set_config("tiny-upstream")),
                     "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "o")]) == 0
    assert "notes.txt: not an image file" in caplog.text


def test_out_must_not_be_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert run(str(PHOTO), "--config", str(set_config("tiny-upstream")), "--out",
               str(target)) == 2
    assert f"--out {target} is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_never_overwrites_an_input(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "a.png")
    shutil.copy(PHOTO, photos / "a_color.png")  # what a's colour map would be called
    before = digest(photos)
    status = run(str(photos), "--config", str(set_config("tiny-upstream")), "--out",
                 str(photos))
    assert status == 0
    assert {k: v for k, v in digest(photos).items() if k in before} == before
    assert (photos / "a-2_color.png").is_file()  # a's outputs get a name that is no input
    assert (photos / "a_color_labels.png").is_file()


def test_skip_existing_resumes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(PHOTO, photos / name)
    out = tmp_path / "out"
    args = (str(photos), "--config", str(set_config("tiny-upstream")), "--out", str(out))
    assert run(*args) == 0
    (out / "b.json").unlink()
    stamp = (out / "a_labels.png").stat().st_mtime_ns
    assert run(*args, "--skip-existing") == 0
    assert (out / "a_labels.png").stat().st_mtime_ns == stamp
    assert (out / "b.json").is_file()


def test_globs_and_missing_inputs(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "x.png")
    shutil.copy(PHOTO, photos / "y.png")
    out = tmp_path / "out"
    assert run(str(photos / "*.png"), "--config", str(set_config("tiny-upstream")), "--out",
               str(out)) == 0
    assert {p.name for p in out.glob("*_labels.png")} == {"x_labels.png", "y_labels.png"}
    assert run(str(photos / "*.gif"), "--config", str(set_config("tiny-upstream")), "--out",
               str(out)) == 2
    assert "no such file, directory or pattern" in capsys.readouterr().err


def test_sixteen_bit_labels_for_many_classes(tmp_path, segmenter):
    from argparse import Namespace

    from vitadapter.cli.segment import Job, write_outputs
    from vitadapter.pipeline.result import SegmentationResult

    labels = np.array([[0, 300], [299, 1]], np.int64)
    names = tuple(f"c{i}" for i in range(301))
    palette = np.zeros((301, 3), np.uint8)
    counts = np.bincount(labels.ravel(), minlength=301)
    result = SegmentationResult(labels, names, palette, np.ones(301, np.float32), counts,
                                image=np.zeros((2, 2, 3), np.uint8), model="big")
    args = Namespace(alpha=0.5, no_legend=True)
    write_outputs(result, Job(PHOTO, tmp_path / "many"), tmp_path, args, segmenter)
    saved = np.asarray(Image.open(tmp_path / "many_labels.png"))
    assert saved.dtype == np.uint16 and saved.tolist() == [[0, 300], [299, 1]]


@pytest.mark.parametrize("flag", ["--behaviour", "--model"])
def test_bad_flag_values_are_rejected(flag, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(PHOTO), "--out", "x", flag, "nonsense",
              *(["--config", "a.json"] if flag == "--model" else [])])
    assert "error" in capsys.readouterr().err

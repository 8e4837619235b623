"""``vitadapter segment``: what ``--skip-existing`` guarantees, output names stable across runs,
outputs never taken for inputs; a real process killed in the middle of writing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitadapter.cli import main

from .conftest import PHOTO
from .helpers import kill_when_torn
from .quick_runner import patch_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def quick_backend(monkeypatch):
    """File handling is what is tested here: a backend that answers at once."""
    patch_cli(monkeypatch)


def segment(*args: str) -> int:
    return main(["-q", "segment", *args])


def summary(capsys) -> str:
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("segmented")][-1]


def photos_with(tmp_path: Path, *names: str) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for name in names:
        Image.open(PHOTO).convert("RGB").save(photos / name)
    return photos


def test_partial_outputs_are_redone(tmp_path, capsys):
    photos = photos_with(tmp_path, "a.png", "b.png", "c.png")
    out = tmp_path / "out"
    assert segment(str(photos), "--out", str(out)) == 0
    complete = (out / "a_overlay.png").read_bytes()
    (out / "a_overlay.png").write_bytes(complete[:100])  # killed while the overlay was written
    (out / "b.json").write_text("")  # disk full while the JSON was written
    capsys.readouterr()
    assert segment(str(photos), "--out", str(out), "--skip-existing") == 0
    assert summary(capsys).startswith("segmented 2 image(s)")
    assert (out / "a_overlay.png").read_bytes() == complete
    report = json.loads((out / "b.json").read_text())
    assert report["source"] == str((photos / "b.png").resolve())
    assert (report["precision"], report["device_kind"]) == ("fp32", "cpu")


TORN_WRITER = """
import pathlib, sys, time
from PIL import Image
sys.path.insert(0, sys.argv[1])
from tests.quick_runner import patch_cli
from vitadapter.cli import main

patch_cli()
WHAT = sys.argv[2]
real_write_text, real_save = pathlib.Path.write_text, Image.Image.save

def stop_here(path, data):
    with open(path, "wb") as file:  # half of it, then the process is killed
        file.write(data[: len(data) // 2])
    print("TORN", flush=True)
    time.sleep(600)

def write_text(self, data, *args, **kwargs):
    if WHAT == "json" and ".json" in self.name:
        stop_here(self, data.encode())
    return real_write_text(self, data, *args, **kwargs)

def save(self, fp, *args, **kwargs):
    if WHAT == "overlay" and "overlay" in str(fp):
        import io
        buffer = io.BytesIO()
        real_save(self, buffer, format="PNG")
        stop_here(fp, buffer.getvalue())
    return real_save(self, fp, *args, **kwargs)

pathlib.Path.write_text, Image.Image.save = write_text, save
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("what", ["json", "overlay"])
def test_killed_mid_write_then_skip_existing_redoes_the_image(what, tmp_path, capsys):
    photos = photos_with(tmp_path, "a.png")
    out = tmp_path / "out"
    killed = kill_when_torn(TORN_WRITER, what, "-q", "segment", str(photos), "--out", str(out))
    assert killed == -signal.SIGKILL
    assert segment(str(photos), "--out", str(out), "--skip-existing") == 0
    assert summary(capsys).startswith("segmented 1 image(s)")
    report = json.loads((out / "a.json").read_text())
    for kind, size in report["output_bytes"].items():
        with Image.open(out / f"a_{kind}.png") as image:
            image.load()
        assert (out / f"a_{kind}.png").stat().st_size == size
    assert sorted(p.name for p in out.iterdir()) == [
        ".vitadapter-segment.jsonl", "a.json", "a_color.png", "a_labels.png", "a_overlay.png"]


def test_output_names_are_stable_when_inputs_are_added(tmp_path, capsys):
    photos = photos_with(tmp_path, "a.png")
    out = tmp_path / "out"
    assert segment(str(photos), "--out", str(out)) == 0
    stamp = (out / "a_labels.png").stat().st_mtime_ns
    Image.open(PHOTO).convert("RGB").save(photos / "a.jpg")  # sorts before a.png
    capsys.readouterr()
    assert segment(str(photos), "--out", str(out), "--skip-existing") == 0
    assert summary(capsys).startswith("segmented 1 image(s)")
    assert (out / "a_labels.png").stat().st_mtime_ns == stamp
    assert json.loads((out / "a-2.json").read_text())["image"] == str(photos / "a.jpg")
    assert json.loads((out / "a.json").read_text())["image"] == str(photos / "a.png")
    assert segment(str(photos), "--out", str(out), "--skip-existing") == 0
    assert summary(capsys).startswith("segmented 0 image(s)")


@pytest.mark.parametrize("inside", ["seg", "."])
def test_outputs_are_never_taken_for_inputs(inside, tmp_path, capsys):
    photos = photos_with(tmp_path, "a.png")
    out = photos / inside
    for _ in range(3):
        assert segment(str(photos), "--out", str(out)) == 0
        assert summary(capsys).startswith("segmented 1 image(s)")
    assert not (out / "seg").exists()
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json"]
    labels = np.asarray(Image.open(out / "a_labels.png"))
    assert labels.shape == (200, 260)

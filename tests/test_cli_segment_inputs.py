"""``vitadapter segment`` on hostile inputs: a decoder's exception or an oversized photo is one
file's error, and the batch goes on."""

from __future__ import annotations

import pytest
from PIL import Image

from vitadapter.cli import main
from vitadapter.errors import ImageError
from vitadapter.pipeline.images import load_image

from .conftest import PHOTO
from .helpers import png_with_header, within
from .quick_runner import patch_cli


@pytest.fixture(autouse=True)
def quick_backend(monkeypatch):
    patch_cli(monkeypatch)


def test_opencv_errors_are_image_errors(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header(60000, 60000))
    with pytest.raises(ImageError, match=r"bomb\.png: OpenCV cannot decode it "
                                         r"\(pixels <= CV_IO_MAX_IMAGE_PIXELS\)"):
        load_image(bomb)


def test_a_bad_photo_does_not_stop_the_batch(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_bomb.png").write_bytes(png_with_header(60000, 60000))
    (photos / "b_huge.png").write_bytes(png_with_header(12000, 12000))
    Image.open(PHOTO).convert("RGB").save(photos / "c.png")
    out = tmp_path / "out"
    assert main(["-q", "segment", str(photos), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "a_bomb.png: too many pixels" in err
    assert ("b_huge.png: 12000x12000 = 144000000 pixels, more than --max-pixels 100000000; "
            "raise it to segment this photo") in err
    assert "segmented 1 image(s)" in err and (out / "c.json").is_file()
    assert main(["-q", "segment", str(photos / "c.png"), "--out", str(out),
                 "--max-pixels", "50000"]) == 1
    assert "260x200 = 52000 pixels, more than --max-pixels 50000" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["decode", "write"])
def test_memory_error_on_one_huge_photo_is_that_photo_s_error(stage, tmp_path, capsys,
                                                              monkeypatch):
    import vitadapter.cli.segment as segment
    import vitadapter.stream as stream

    def failing(real, position):
        def call(*args, **kwargs):
            if "b_huge" in str(args[position]):
                raise MemoryError
            return real(*args, **kwargs)
        return call

    if stage == "decode":
        monkeypatch.setattr(stream, "load_image", failing(stream.load_image, 0))
    else:
        monkeypatch.setattr(segment, "write_outputs", failing(segment.write_outputs, 1))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b_huge.png", "c.png"):
        Image.open(PHOTO).convert("RGB").save(photos / name)
    out = tmp_path / "out"
    assert within(120, lambda: main(["-q", "segment", str(photos), "--out", str(out)])) == 1
    err = capsys.readouterr().err
    huge = photos / "b_huge.png"
    assert (f"error: {huge}: not enough memory to segment it (too large a photo for this "
            "machine; downscale it, or refuse it with --max-pixels)") in err
    assert "segmented 2 image(s)" in err and (out / "c.json").is_file()
    assert all(line.count(str(huge)) <= 1 for line in err.splitlines())


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_image_file_errors_name_the_path_once_first(kind, tmp_path):
    path = tmp_path / "photo.png"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_the_umask_gives(umask, tmp_path):
    import os
    import stat

    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        assert main(["-q", "segment", str(PHOTO), "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()
             if p.name.startswith("input")}
    assert sorted(modes) == ["input.json", "input_color.png", "input_labels.png",
                             "input_overlay.png"]
    assert set(modes.values()) == {0o666 & ~umask}

"""``vitadapter segment`` on hostile inputs: a decoder's exception or an oversized photo is one
file's error, and the batch goes on."""

from __future__ import annotations

import pytest
from PIL import Image

from vitadapter.cli import main
from vitadapter.errors import ImageError
from vitadapter.pipeline.images import load_image

from .conftest import PHOTO
from .helpers import png_with_header
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

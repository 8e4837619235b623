"""Image loading in every input mode and the official preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vitadapter import ImageError, resolve_config
from vitadapter.pipeline.images import load_image
from vitadapter.pipeline.preprocess import augmented_views, preprocess, rescale_size

from .conftest import PHOTO, expected, set_config

RGB = np.array(Image.open(PHOTO).convert("RGB"))


def test_preprocessed_tensor_is_bit_exact(reference_set):
    cfg = resolve_config(set_config(reference_set)).inference
    view = preprocess(load_image(PHOTO), cfg)
    assert np.array_equal(view.image, expected(reference_set)["img"][0])
    assert view.valid_shape == (128, 192) and view.original_shape == (200, 260)


@pytest.mark.parametrize(("size", "scale", "resized"), [
    ((480, 640), (3584, 896), (896, 1195)),      # the notes' worked example (then 896x1216)
    ((3000, 4000), (3584, 896), (896, 1195)),
    ((200, 260), (512, 128), (128, 166)),
    ((100, 2000), (3584, 896), (179, 3584)),      # 20:1, capped by the long side
    ((1, 1), (3584, 896), (896, 896)),
])
def test_rescale_size(size, scale, resized):
    assert rescale_size(*size, scale) == resized


def test_resize_to_multiple_and_padding_of_thin_images():
    cfg = resolve_config("cocostuff164k-beit-adapter-l-m2f-896").inference
    view = preprocess(np.zeros((480, 640, 3), np.uint8), cfg)
    assert view.valid_shape == (896, 1216) and view.image.shape == (3, 896, 1216)
    thin = preprocess(np.full((100, 2000, 3), 255, np.uint8), cfg)
    assert thin.valid_shape == (192, 3584) and thin.image.shape == (3, 896, 3584)
    pad_value = (0 - np.float32(123.675)) / np.float32(58.395)
    assert np.allclose(thin.image[0, 192:], pad_value)
    assert np.allclose(thin.image[0, :192], (255 - 123.675) / 58.395)


def test_tta_views_follow_multiscale_flip_aug():
    cfg = resolve_config("cocostuff164k-beit-adapter-l-m2f-896").inference
    views = augmented_views(np.zeros((480, 640, 3), np.uint8), cfg, tta=True)
    assert [(v.valid_shape, v.flipped) for v in views] == [
        ((640, 864), False), ((640, 864), True), ((768, 1024), False), ((768, 1024), True),
        ((896, 1216), False), ((896, 1216), True)]
    assert all(min(v.image.shape[1:]) >= 896 for v in views)


def _exif_rotated_jpeg_and_upright() -> tuple[bytes, np.ndarray]:
    """A PNG-quality picture stored sideways with EXIF orientation 6 (rotate 90 cw)."""
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(RGB, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue(), RGB


def test_exif_orientation_is_applied(tmp_path):
    data, upright = _exif_rotated_jpeg_and_upright()
    path = tmp_path / "rotated.png"
    path.write_bytes(data)
    assert np.array_equal(load_image(Image.open(path)), upright)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_pil_modes_convert_sensibly(mode):
    base = Image.fromarray(RGB)
    if mode == "I;16":
        gray = np.asarray(base.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(gray)
        assert img.mode.startswith("I;16")
        out = load_image(img)
        assert np.array_equal(out[:, :, 0], np.asarray(base.convert("L")))
    else:
        img = base.convert(mode)
        out = load_image(img)
        assert np.array_equal(out, np.asarray(img.convert("RGB")))
    assert out.shape == (*RGB.shape[:2], 3) and out.dtype == np.uint8
    if mode == "RGBA":  # alpha is dropped, colours kept
        assert np.array_equal(out, RGB)


def test_array_and_tensor_modes():
    assert np.array_equal(load_image(RGB), RGB)
    assert np.array_equal(load_image(RGB[:, :, ::-1].copy(), channel_order="bgr"), RGB)
    assert np.array_equal(load_image(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])), RGB)
    chw = torch.from_numpy(RGB).permute(2, 0, 1)
    assert np.array_equal(load_image(chw), RGB)
    assert np.array_equal(load_image(chw[None].float() / 255), RGB)
    assert np.array_equal(load_image(RGB.astype(np.float32) / 255), RGB)


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((4, 5, 6), np.uint8), r"expected an \(H, W, 3\) image array, got shape \(4, 5, 6\)"),
    (np.full((4, 5, 3), 3.0), r"float images must hold values in \[0, 1\]"),
    (torch.zeros(8, 8, 3), r"expected a \(3, H, W\) image tensor.*permute"),
    (12, "unsupported image type int"),
])
def test_bad_inputs_are_explained(bad, message):
    with pytest.raises(ImageError, match=message):
        load_image(bad)


def test_bad_files_are_explained(tmp_path):
    with pytest.raises(ImageError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageError, match=r"corrupt\.jpg: not a readable image"):
        load_image(corrupt)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(empty)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_truncated_files_are_explained(tmp_path):
    """Formats OpenCV refuses when cut short go to Pillow, whose plugins need a full file
    object (readline), and must end in an ImageError, not an AttributeError."""
    for fmt, suffix in (("WEBP", "webp"), ("PNG", "png"), ("JPEG", "jpg")):
        buffer = io.BytesIO()
        Image.open(PHOTO).convert("RGB").save(buffer, format=fmt)
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
        with pytest.raises(ImageError, match="not a readable image"):
            load_image(cut)


def test_unreachable_url_is_explained():
    with pytest.raises(ImageError, match=r"could not download http://127\.0\.0\.1:9/x\.png.*"
                                         r"offline\?"):
        load_image("http://127.0.0.1:9/x.png")


def test_input_modes_give_the_same_label_map(segmenter, tmp_path):
    reference = segmenter(PHOTO).label_map
    data, _ = _exif_rotated_jpeg_and_upright()
    rotated = tmp_path / "rotated.png"
    rotated.write_bytes(data)
    same = [
        str(PHOTO),
        Image.open(PHOTO),
        Image.open(PHOTO).convert("RGBA"),
        Image.open(rotated),
        RGB,
        np.ascontiguousarray(RGB[:, :, ::-1]),
        torch.from_numpy(RGB).permute(2, 0, 1),
    ]
    orders = ["rgb"] * 5 + ["bgr", "rgb"]
    for image, order in zip(same, orders, strict=True):
        assert np.array_equal(segmenter(image, channel_order=order).label_map, reference)

"""Dataset files as people have them: upper-case extensions, orphan annotations, EXIF-rotated
JPEGs, odd image shapes, hostile ``classes.json`` and annotations checked up front."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vitadapter.data.custom import open_custom
from vitadapter.data.datasets import open_dataset
from vitadapter.data.train import TrainDataset, open_split
from vitadapter.data.transforms import TrainPipelineConfig
from vitadapter.errors import DatasetError
from vitadapter.pipeline.images import load_image

from .test_training_data import NORM, write_custom

PIPELINE = TrainPipelineConfig(img_scale=(512, 128), crop=64)
ORIENTATION = 0x0112  # the EXIF tag


def test_upper_case_extensions_are_training_images(tmp_path):
    root = write_custom(tmp_path / "d", count=3)
    images, labels = root / "images" / "train", root / "annotations" / "train"
    (images / "img1.png").rename(images / "img1.PNG")
    Image.open(images / "img2.png").convert("RGB").save(images / "IMG2.JPG", quality=95)
    (images / "img2.png").unlink()
    (labels / "img2.png").rename(labels / "IMG2.PNG")
    data = open_custom(root, "train")
    assert [(s.name, s.image.name, s.label.name) for s in data.samples] == [
        ("IMG2", "IMG2.JPG", "IMG2.PNG"), ("img0", "img0.png", "img0.png"),
        ("img1", "img1.PNG", "img1.png")]


def test_upper_case_extensions_in_an_evaluation_layout(tmp_path):
    for split in ("images/validation", "annotations/validation"):
        (tmp_path / split).mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "images/validation/a.JPG")
    Image.new("L", (8, 6)).save(tmp_path / "annotations/validation/a.PNG")
    [sample] = open_dataset(tmp_path, "ade20k", "val").samples
    assert (sample.name, sample.image.name, sample.label.name) == ("a", "a.JPG", "a.PNG")


def test_orphan_annotations_are_reported(tmp_path, caplog):
    root = write_custom(tmp_path / "d", count=3)
    Image.open(root / "images/train/img1.png").save(root / "images/train/img1.webp")
    (root / "images/train/img1.png").unlink()  # its image in a format the layout lacks
    with caplog.at_level(logging.WARNING, logger="vitadapter"):
        data = open_custom(root, "train")
    assert [s.name for s in data.samples] == ["img0", "img2"]
    assert (f"1 annotation(s) without an image, not used: {root / 'annotations/train/img1.png'}"
            in caplog.text)


def test_two_images_of_one_name_are_refused(tmp_path):
    root = write_custom(tmp_path / "d", count=1)
    Image.open(root / "images/train/img0.png").save(root / "images/train/img0.PNG")
    with pytest.raises(DatasetError, match=r"img0.PNG and .*img0.png share the name 'img0': "
                                           "keep one image per name"):
        open_custom(root, "train")


def exif_rotated(path: Path, rgb: np.ndarray, orientation: int = 6) -> None:
    """A JPEG of ``rgb`` (the stored pixels) whose EXIF says to rotate it for display."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(rgb).save(path, quality=100, subsampling=0, exif=exif)


@pytest.mark.parametrize("size", [(40, 56), (48, 48)])  # a size mismatch / a silent rotation
def test_training_images_ignore_exif_orientation(tmp_path, size):
    root = write_custom(tmp_path / "d", count=1, size=size)
    png = root / "images/train/img0.png"
    stored = np.asarray(Image.open(png).convert("RGB"))
    exif_rotated(png.with_suffix(".jpg"), stored)
    png.unlink()
    jpeg = png.with_suffix(".jpg")
    assert load_image(jpeg).shape[:2] == size[::-1]  # what a viewer (and `segment`) shows
    dataset = TrainDataset(open_custom(root, "train"), PIPELINE, NORM, 0)
    rgb, label = dataset.read(0)
    raw = cv2.cvtColor(cv2.imread(str(jpeg), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                       cv2.COLOR_BGR2RGB)
    assert np.array_equal(rgb, raw) and label.shape == size
    assert np.abs(rgb.astype(int) - stored).max() < 40  # the stored pixels, not turned
    assert dataset[(0, 0)][0].shape == (3, 64, 64)


def test_a_sliver_image_names_the_file(tmp_path):
    root = write_custom(tmp_path / "d", count=1)
    Image.new("RGB", (3000, 2)).save(root / "images/train/img0.png")
    Image.new("L", (3000, 2)).save(root / "annotations/train/img0.png")
    pipeline = TrainPipelineConfig(img_scale=(256, 64), crop=64)  # 2 rows become under 0.5
    dataset = TrainDataset(open_custom(root, "train"), pipeline, NORM, 0)
    with pytest.raises(DatasetError, match=r"image .*img0.png \(3000x2\) cannot go through the "
                                           r"training pipeline: resized to the scale .* "
                                           r"would be \d+x0 pixels"):
        dataset[(0, 0)]


def test_label_values_outside_the_classes_are_caught_up_front(tmp_path):
    root = write_custom(tmp_path / "d", count=3)
    label = np.zeros((96, 80), np.uint8)
    label[5, 7] = 3  # classes 0..2
    Image.fromarray(label).save(root / "annotations/train/img2.png")
    with pytest.raises(DatasetError, match=r"annotations/train/img2.png holds the label value "
                                           r"3, out of range for custom \(class ids 0..2"):
        open_split(root, "custom", "train")


def test_palette_annotations_are_checked_by_index(tmp_path):
    root = write_custom(tmp_path / "d", count=1)
    label = Image.open(root / "annotations/train/img0.png").convert("P")
    label.putpalette([200, 0, 0] * 256)
    label.save(root / "annotations/train/img0.png")
    assert len(open_split(root, "custom", "train").samples) == 1
    array = np.asarray(label).copy()
    array[0, 0] = 9
    bad = Image.fromarray(array, "P")
    bad.putpalette([200, 0, 0] * 256)
    bad.save(root / "annotations/train/img0.png")
    with pytest.raises(DatasetError, match="holds the label value 9"):
        open_split(root, "custom", "train")


def test_all_ignored_annotations_are_reported(tmp_path, caplog):
    root = write_custom(tmp_path / "d", count=3)
    ignored = np.full((96, 80), 255, np.uint8)
    Image.fromarray(ignored).save(root / "annotations/train/img1.png")
    with caplog.at_level(logging.WARNING, logger="vitadapter"):
        open_split(root, "custom", "train")
    assert (f"1 of 3 annotations label no pixel (255, ignored, everywhere), so their images "
            f"teach nothing: {root / 'annotations/train/img1.png'}") in caplog.text
    for name in ("img0", "img2"):
        Image.fromarray(ignored).save(root / f"annotations/train/{name}.png")
    with pytest.raises(DatasetError, match=r"every annotation of .*annotations/train is 255 "
                                           r"\(ignored\) everywhere: nothing to learn"):
        open_split(root, "custom", "train")


@pytest.mark.parametrize(("content", "message"), [
    ('{"classes": ["caf\xe9"]}'.encode("latin-1"), r"is not UTF-8 text .* save it as UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply to be a class list"),
    (None, r"is a directory: the custom layout needs a JSON file"),
    (json.dumps({"classes": ["sky", "road", "sky"]}).encode(),
     r"names the class\(es\) 'sky' more than once"),
])
def test_bad_classes_json_is_explained(tmp_path, content, message):
    root = write_custom(tmp_path / "d", count=1)
    classes = root / "classes.json"
    classes.unlink()
    if content is None:
        classes.mkdir()
    else:
        classes.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        open_custom(root, "train")


def test_an_unreadable_training_image_is_named_once(tmp_path):
    root = write_custom(tmp_path / "d", count=1)
    image = root / "images/train/img0.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = TrainDataset(open_custom(root, "train"), PIPELINE, NORM, 0)
    with pytest.raises(DatasetError) as caught:
        dataset.read(0)
    assert str(caught.value).startswith(f"{image}: not a readable image")
    assert str(caught.value).count(str(image)) == 1

"""Dataset layouts: pairing, label decoding (COCO-Stuff raw ids, reduce_zero_label) and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitadapter.data.datasets import COCO_STUFF_RAW_IDS
from vitadapter.errors import DatasetError
from vitadapter.evaluation import LAYOUTS, decode_label, open_dataset
from vitadapter.pipeline.classes import COCO_STUFF_CLASSES

# Entries of mmseg's tools/convert_datasets/coco_stuff164k.py ``clsID_to_trID`` (raw id ->
# train id) around every gap in the raw numbering, and its ends.
MMSEG_CLSID_TO_TRID = {0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40,
                       64: 59, 66: 60, 69: 61, 71: 62, 81: 72, 83: 73, 89: 79, 91: 80,
                       92: 81, 181: 170, 255: 255}


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_coco_stuff_raw_ids_are_mmseg_mapping():
    assert len(COCO_STUFF_RAW_IDS) == 171 == len(set(COCO_STUFF_RAW_IDS))
    assert list(COCO_STUFF_RAW_IDS) == sorted(COCO_STUFF_RAW_IDS)
    assert set(range(182)) - set(COCO_STUFF_RAW_IDS) == {11, 25, 28, 29, 44, 65, 67, 68, 70,
                                                         82, 90}
    table = LAYOUTS["coco-stuff164k-raw"].label_table
    for raw, train in MMSEG_CLSID_TO_TRID.items():
        assert table[raw] == train, raw
    # raw id = COCO category id - 1: 12 = "stop sign" (COCO 13), 66 = "dining table" (COCO 67),
    # 91 = "banner" (COCO 92, the first stuff class)
    assert [COCO_STUFF_CLASSES[table[r]] for r in (12, 66, 91)] == ["stop sign",
                                                                    "dining table", "banner"]


@pytest.mark.parametrize(("dataset", "stored", "train_ids"), [
    ("coco-stuff164k", [0, 170, 255], [0, 170, 255]),
    ("coco-stuff164k-raw", [0, 12, 181, 255], [0, 11, 170, 255]),
    ("ade20k", [0, 1, 150, 255], [255, 0, 149, 255]),
    ("cityscapes", [0, 18, 255], [0, 18, 255]),
    ("coco-stuff10k", [0, 1, 171, 255], [255, 0, 170, 255]),
    ("pascal-context-59", [0, 1, 59, 255], [255, 0, 58, 255]),
])
def test_label_values_become_train_ids(tmp_path, dataset, stored, train_ids):
    path = tmp_path / "label.png"
    save(path, np.array([stored], np.uint8))
    decoded = decode_label(path, LAYOUTS[dataset])
    assert decoded.dtype == np.uint8 and decoded.tolist() == [train_ids]


@pytest.mark.parametrize(("dataset", "bad"), [
    ("coco-stuff164k", 171), ("coco-stuff164k-raw", 11), ("coco-stuff164k-raw", 182),
    ("ade20k", 151), ("cityscapes", 19), ("coco-stuff10k", 172), ("pascal-context-59", 60),
])
def test_label_value_out_of_range_names_file_and_value(tmp_path, dataset, bad):
    path = tmp_path / "frame_0042.png"
    save(path, np.array([[0, bad], [bad, 1]], np.uint8))
    with pytest.raises(DatasetError, match=rf"{path}.* label value {bad}, out of range for "
                                           rf"{dataset}"):
        decode_label(path, LAYOUTS[dataset])


def test_palette_labels_read_as_indices_and_colour_labels_refused(tmp_path):
    indexed = Image.fromarray(np.array([[3, 4]], np.uint8), mode="P")
    indexed.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    indexed.save(tmp_path / "p.png")
    assert decode_label(tmp_path / "p.png", LAYOUTS["coco-stuff164k"]).tolist() == [[3, 4]]
    save(tmp_path / "rgb.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel"):
        decode_label(tmp_path / "rgb.png", LAYOUTS["coco-stuff164k"])


def test_cityscapes_pairs_nested_city_folders(tmp_path):
    for city, frame in [("lindau", "lindau_000001_000019"),
                        ("frankfurt", "frankfurt_000000_000294")]:
        save(tmp_path / "leftImg8bit/val" / city / f"{frame}_leftImg8bit.png",
             np.zeros((2, 3, 3), np.uint8))
        save(tmp_path / "gtFine/val" / city / f"{frame}_gtFine_labelTrainIds.png",
             np.zeros((2, 3), np.uint8))
        save(tmp_path / "gtFine/val" / city / f"{frame}_gtFine_labelIds.png",
             np.full((2, 3), 33, np.uint8))
    data = open_dataset(tmp_path, "cityscapes")
    assert [s.name for s in data.samples] == ["frankfurt/frankfurt_000000_000294",
                                              "lindau/lindau_000001_000019"]
    assert data.samples[1].label.name == "lindau_000001_000019_gtFine_labelTrainIds.png"
    assert data.num_classes == 19


def test_ade20k_split_and_order(tmp_path):
    for stem in ["ADE_val_00000002", "ADE_val_00000001"]:
        save(tmp_path / "images/validation" / f"{stem}.jpg", np.zeros((4, 4, 3), np.uint8))
        save(tmp_path / "annotations/validation" / f"{stem}.png", np.ones((4, 4), np.uint8))
    data = open_dataset(tmp_path, "ade20k", "val")
    assert [s.name for s in data.samples] == ["ADE_val_00000001", "ADE_val_00000002"]
    assert data.read_label(data.samples[0]).tolist() == np.zeros((4, 4)).tolist()
    assert data.class_names[0] == "wall" and data.num_classes == 150


def test_raw_coco_stuff_also_found_in_mmseg_annotations_folder(tmp_path):
    save(tmp_path / "images/val2017/000000000139.jpg", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "annotations/val2017/000000000139.png", np.full((4, 4), 12, np.uint8))
    data = open_dataset(tmp_path, "coco-stuff164k-raw", "val2017")
    assert data.read_label(data.samples[0]).max() == 11


def test_wrong_root_says_what_was_expected(tmp_path):
    (tmp_path / "val2017").mkdir()
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path, "coco-stuff164k")
    message = str(info.value)
    assert "does not look like a coco-stuff164k root" in message
    assert f"{tmp_path}/images/val2017/*.jpg" in message
    assert f"{tmp_path}/annotations/val2017/*_labelTrainIds.png" in message
    assert "it contains val2017/" in message
    (tmp_path / "images/val2017").mkdir(parents=True)
    (tmp_path / "stuffthingmaps_trainval2017/val2017").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"images/val2017/\*.jpg and annotations .*; it "
                                           r"contains images/, stuffthingmaps_trainval2017/, "
                                           r"val2017/ \(the folders of --dataset "
                                           r"coco-stuff164k-raw are there\)"):
        open_dataset(tmp_path, "coco-stuff164k")
    with pytest.raises(DatasetError, match="is not a directory"):
        open_dataset(tmp_path / "nowhere", "ade20k")


def test_image_without_annotation_is_named(tmp_path):
    for stem in ["000000000139", "000000000285", "000000000632"]:
        save(tmp_path / "images/val2017" / f"{stem}.jpg", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "annotations/val2017/000000000139_labelTrainIds.png",
         np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"images/val2017/000000000285.jpg has no annotation: "
                                           r"expected .*000000000285_labelTrainIds.png "
                                           r"\(and 1 more images without one\)"):
        open_dataset(tmp_path, "coco-stuff164k")


def test_pascal_context_reads_the_split_file_in_its_order(tmp_path):
    voc = tmp_path / "VOC2010"
    for stem in ["2008_000002", "2008_000008", "2008_000001"]:  # 0001 is not in val
        save(voc / "JPEGImages" / f"{stem}.jpg", np.zeros((4, 4, 3), np.uint8))
        save(voc / "SegmentationClassContext" / f"{stem}.png", np.full((4, 4), 59, np.uint8))
    split = voc / "ImageSets/SegmentationContext/val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2008_000008\n2008_000002\n\n")
    data = open_dataset(voc, "pascal-context-59", "val")
    assert [s.name for s in data.samples] == ["2008_000008", "2008_000002"]
    assert data.read_label(data.samples[0]).tolist() == np.full((4, 4), 58).tolist()
    assert data.class_names[0] == "aeroplane" and data.num_classes == 59
    split.write_text("2008_000008\n2008_000009\n")
    with pytest.raises(DatasetError, match=r"JPEGImages/2008_000009.jpg listed in the split "
                                           r"file is missing"):
        open_dataset(voc, "pascal-context-59", "val")
    with pytest.raises(DatasetError, match=r"split file .*SegmentationContext/train.txt not "
                                           r"found"):
        open_dataset(voc, "pascal-context-59", "train")


def test_coco_stuff10k_val_is_the_test2014_split(tmp_path):
    stem = "COCO_train2014_000000000077"
    save(tmp_path / "images/test2014" / f"{stem}.jpg", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "annotations/test2014" / f"{stem}_labelTrainIds.png",
         np.array([[0, 1, 171, 255]], np.uint8))
    data = open_dataset(tmp_path, "coco-stuff10k", "val")
    assert data.split == "test2014" and [s.name for s in data.samples] == [stem]
    assert data.read_label(data.samples[0]).tolist() == [[255, 0, 170, 255]]
    assert data.class_names == COCO_STUFF_CLASSES

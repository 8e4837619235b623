"""The training data pipeline (mmseg 0.x transforms), the custom layout and the batch order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitadapter.config.schema import InferenceConfig
from vitadapter.data.custom import open_custom
from vitadapter.data.train import TrainDataset, batch_keys, open_split, train_loader
from vitadapter.data.transforms import (
    TrainPipelineConfig,
    _convert,
    pad_to,
    photometric_distortion,
    random_crop,
    random_resize,
)
from vitadapter.errors import DatasetError
from vitadapter.pipeline.preprocess import normalize

NORM = InferenceConfig(img_scale=(512, 128), crop_size=(128, 128), stride=(64, 64))


def write_custom(root: Path, count: int = 4, size: tuple[int, int] = (96, 80),
                 classes: tuple[str, ...] = ("background", "square", "disc"),
                 split: str = "train") -> Path:
    """A small custom dataset: a square (class 1) and a disc (class 2) on a background."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(classes)}))
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(count):
        label = np.zeros((h, w), np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[top:top + h // 3, left:left + w // 3] = 1
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 6) ** 2] = 2
        rgb = np.array([[40, 40, 40], [230, 40, 40], [40, 40, 230]], np.uint8)[label]
        Image.fromarray(rgb).save(root / "images" / split / f"img{i}.png")
        Image.fromarray(label).save(root / "annotations" / split / f"img{i}.png")
    return root


def test_resize_draws_the_ratio_and_rounds_as_mmcv():
    img = np.zeros((100, 300, 3), np.uint8)
    label = np.zeros((100, 300), np.uint8)
    rng = np.random.default_rng(3)
    ratio = np.random.default_rng(3).random() * 1.5 + 0.5
    out, out_label = random_resize(img, label, (512, 128), (0.5, 2.0), rng)
    long_cap, short = int(512 * ratio), int(128 * ratio)
    scale = min(long_cap / 300, short / 100)
    assert out.shape[:2] == (int(100 * scale + 0.5), int(300 * scale + 0.5))
    assert out_label.shape == out.shape[:2]


def test_resize_keeps_labels_exact():
    label = np.random.default_rng(0).integers(0, 3, (40, 60)).astype(np.uint8)
    label[0, 0] = 255
    _, out = random_resize(np.zeros((40, 60, 3), np.uint8), label, (512, 128), (0.5, 2.0),
                           np.random.default_rng(1))
    assert set(np.unique(out)) <= {0, 1, 2, 255}  # nearest: no blended ids


def test_random_crop_keeps_the_first_box_where_no_class_dominates():
    label = np.zeros((200, 200), np.uint8)
    label[120:, 120:] = 1
    label[:10] = 255  # ignored pixels do not count
    img = np.arange(200 * 200 * 3, dtype=np.int64).reshape(200, 200, 3)
    redrawn = 0
    for seed in range(30):
        draws = np.random.default_rng(seed)
        boxes = [(int(draws.integers(0, 137)), int(draws.integers(0, 137))) for _ in range(11)]

        def balanced(box: tuple[int, int]) -> bool:
            crop = label[box[0]:box[0] + 64, box[1]:box[1] + 64]
            counts = np.bincount(crop[crop != 255], minlength=2)
            return bool((counts > 0).all() and counts.max() / counts.sum() < 0.75)

        chosen = next((b for b in boxes[:10] if balanced(b)), boxes[10])
        redrawn += chosen != boxes[0]
        out, out_label = random_crop(img, label, 64, 0.75, np.random.default_rng(seed))
        top, left = chosen
        assert np.array_equal(out, img[top:top + 64, left:left + 64]), seed
        assert np.array_equal(out_label, label[top:top + 64, left:left + 64]), seed
    assert redrawn > 10


def test_random_crop_of_a_small_image_is_the_image():
    img, label = np.ones((30, 40, 3), np.uint8), np.ones((30, 40), np.uint8)
    out, out_label = random_crop(img, label, 64, 0.75, np.random.default_rng(0))
    assert out.shape == (30, 40, 3) and out_label.shape == (30, 40)


def test_convert_clips_and_truncates_as_mmseg():
    values = np.array([0, 100, 200, 250], np.uint8)
    assert _convert(values, alpha=1.3).tolist() == [0, 130, 255, 255]
    assert _convert(values, beta=-20.7).tolist() == [0, 79, 179, 229]


def test_photometric_distortion_follows_the_draws():
    cfg = TrainPipelineConfig(img_scale=(512, 128), crop=128)
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    for seed in range(20):
        draws = np.random.default_rng(seed)
        out = photometric_distortion(img, cfg, np.random.default_rng(seed))
        # Replay the draws by hand for brightness and the contrast mode.
        expected = img
        if draws.integers(2):
            expected = _convert(expected, beta=draws.uniform(-32, 32))
        mode = draws.integers(2)
        if mode == 1 and draws.integers(2):
            expected = _convert(expected, alpha=draws.uniform(0.5, 1.5))
        hsv_steps = [draws.integers(2)]
        if hsv_steps[0]:
            draws.uniform(0.5, 1.5)
        hsv_steps.append(draws.integers(2))
        if not any(hsv_steps) and mode == 1:
            assert np.array_equal(out, expected), seed
        if any(hsv_steps):
            assert out.dtype == np.uint8 and out.shape == img.shape


def test_pad_fills_image_zero_and_labels_ignore():
    img, label = np.ones((3, 50, 60), np.float32), np.zeros((50, 60), np.uint8)
    padded, labels = pad_to(img, label, 64)
    assert padded.shape == (3, 64, 64) and labels.shape == (64, 64)
    assert padded[:, 50:].sum() == 0 and padded[:, :, 60:].sum() == 0
    assert (labels[50:] == 255).all() and (labels[:, 60:] == 255).all()
    assert (labels[:50, :60] == 0).all()


def test_custom_layout_reads_classes_and_pairs_files(tmp_path):
    root = write_custom(tmp_path, count=3)
    data = open_split(root, "custom", "train")
    assert data.class_names == ("background", "square", "disc")
    assert [s.name for s in data.samples] == ["img0", "img1", "img2"]
    assert set(np.unique(data.read_label(data.samples[0]))) == {0, 1, 2}


def test_samples_are_seeded_per_key_and_independent_of_workers(tmp_path):
    root = write_custom(tmp_path, count=5)
    pipeline = TrainPipelineConfig(img_scale=(512, 128), crop=128)
    dataset = TrainDataset(open_custom(root, "train"), pipeline, NORM, seed=7)
    image, label = dataset[(0, 2)]
    assert image.shape == (3, 128, 128) and label.shape == (128, 128)
    again, _ = dataset[(0, 2)]
    other, _ = dataset[(1, 2)]
    assert np.array_equal(image.numpy(), again.numpy())
    assert not np.array_equal(image.numpy(), other.numpy())
    serial = [b for b in train_loader(dataset, 2, 1, 4, num_workers=0)]
    parallel = [b for b in train_loader(dataset, 2, 1, 4, num_workers=2)]
    for (a, la), (b, lb) in zip(serial, parallel, strict=True):
        assert np.array_equal(a.numpy(), b.numpy()) and np.array_equal(la.numpy(), lb.numpy())


def test_batch_order_covers_each_epoch_once():
    keys = [k for i in range(5) for k in batch_keys(3, 5, 2, i)]  # 10 positions, 2 epochs
    assert sorted(i for e, i in keys if e == 0) == list(range(5))
    assert sorted(i for e, i in keys if e == 1) == list(range(5))
    assert batch_keys(3, 5, 2, 4) == keys[8:]


def test_pipeline_normalises_as_the_test_pipeline(tmp_path):
    rgb = np.full((4, 4, 3), 200, np.uint8)
    assert np.allclose(normalize(rgb, NORM)[:, 0, 0],
                       (200 - np.array(NORM.mean)) / np.array(NORM.std), atol=1e-5)


def test_custom_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        (tmp_path / "empty" / "images" / "train").mkdir(parents=True)
        (tmp_path / "empty" / "classes.json").write_text('{"classes": ["a", "b"]}')
        open_custom(tmp_path / "empty", "train")
    root = write_custom(tmp_path / "d", count=2)
    (root / "annotations" / "train" / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"img1.png has no annotation"):
        open_custom(root, "train")
    root = write_custom(tmp_path / "ids", count=1, classes=("background", "square"))
    data = open_custom(root, "train")
    with pytest.raises(DatasetError, match=r"img0.png holds the label value 2.*class ids 0..1"):
        data.read_label(data.samples[0])
    root = write_custom(tmp_path / "size", count=1)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "annotations/train/img0.png")
    dataset = TrainDataset(open_custom(root, "train"),
                           TrainPipelineConfig(img_scale=(512, 128), crop=128), NORM, 0)
    with pytest.raises(DatasetError, match=r"img0.png is 80x96 but its annotation .* is 10x10"):
        dataset[(0, 0)]
    (root / "classes.json").write_text('{"names": []}')
    with pytest.raises(DatasetError, match=r"classes\.json must hold"):
        open_custom(root, "train")

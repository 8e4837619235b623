"""SegmentationResult layouts (ModelScope, transformers) and visualisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitadapter.pipeline.classes import COCO_PANOPTIC_PALETTE, COCO_STUFF_CLASSES, DATASETS
from vitadapter.pipeline.result import SegmentationResult
from vitadapter.pipeline.visualize import colorize, overlay, semantic_seg_masks_to_image

from .conftest import PHOTO


@pytest.fixture(scope="module")
def result(segmenter):
    return segmenter(PHOTO)


def test_modelscope_layout(result):
    out = result.to_modelscope()
    assert set(out) == {"masks", "labels", "scores"}
    ids = result.present
    assert ids == sorted(ids, reverse=True) and len(ids) == len(out["masks"])
    assert out["labels"] == [result.class_names[i] for i in ids]
    stacked = np.stack(out["masks"])
    assert stacked.dtype == np.int64 and set(np.unique(stacked)) == {0, 1}
    assert np.array_equal(stacked.sum(0), np.ones(result.label_map.shape))  # a partition
    for i, mask in zip(ids, out["masks"], strict=True):
        assert np.array_equal(mask, (result.label_map == i).astype(int))
    assert all(0.0 < s <= 1.0 for s in out["scores"]) and len(set(out["scores"])) > 1


def test_confidence_is_the_mean_posterior(segmenter, result):
    """Recompute one class's score from the merged scores at the original size."""
    import torch
    import torch.nn.functional as F

    canvas = torch.from_numpy(segmenter.scores(PHOTO))[None]
    full = F.interpolate(canvas, size=result.label_map.shape, mode="bilinear",
                         align_corners=False)[0]
    posterior = (full / full.sum(0, keepdim=True)).numpy()
    for c in result.present[:3]:
        mask = result.label_map == c
        assert result.confidence[c] == pytest.approx(posterior[c][mask].mean(), abs=1e-5)


def test_hf_layout(result):
    out = result.to_hf()
    assert [d["label"] for d in out] == result.labels
    mask = out[0]["mask"]
    assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (260, 200)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert np.array_equal(np.asarray(mask) == 255, result.label_map == result.present[0])


def test_summary_shares(result):
    rows = result.summary()
    assert sum(r["pixels"] for r in rows) == 200 * 260
    assert rows == sorted(rows, key=lambda r: -r["share"])
    assert rows[0]["color"] == [int(v) for v in result.palette[rows[0]["id"]]]


def test_checkpoints_defective_palette_is_replaced_by_the_default(segmenter):
    # The reference checkpoint's meta carries mmseg's palette (with its repeated colours): the
    # fixed default takes its place.
    default = DATASETS["coco-stuff164k"]
    assert segmenter.palette[0].tolist() == [0, 192, 64]
    assert (segmenter.palette == default.palette_array()).all()
    assert default.classes == COCO_STUFF_CLASSES and len(set(default.palette)) == 171
    assert (0, 0, 0) not in default.palette


def test_colorize_and_overlay():
    labels = np.array([[0, 1], [2, 1]])
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    assert colorize(labels, palette).tolist() == [[[255, 0, 0], [0, 255, 0]],
                                                  [[0, 0, 255], [0, 255, 0]]]
    photo = np.full((2, 2, 3), 100, np.uint8)
    blended = overlay(photo, labels, palette, alpha=0.25)
    assert blended[0, 0].tolist() == [139, 75, 75]  # 0.75*100 + 0.25*255 = 138.75
    with pytest.raises(ValueError, match="alpha must lie in"):
        overlay(photo, labels, palette, alpha=1.5)
    with pytest.raises(ValueError, match="must be uint8 RGB, got float32"):
        overlay(photo.astype(np.float32), labels, palette)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_overlay_is_the_float32_blend_of_every_pair(alpha):
    """Every (photo, colour) byte pair: the table lookup equals the blend computed directly."""
    photo = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256, 1).repeat(3, 2)
    palette = np.stack([np.arange(256, dtype=np.uint8)] * 3, 1)
    labels = np.tile(np.arange(256), (256, 1))
    direct = photo.astype(np.float32) * (1.0 - alpha) + palette[labels].astype(np.float32) * alpha
    want = np.clip(np.round(direct), 0, 255).astype(np.uint8)
    assert np.array_equal(overlay(photo, labels, palette, alpha), want)


def test_overlay_with_legend(result):
    plain = result.overlay(0.5)
    legend = result.overlay(0.5, legend=True)
    assert plain.shape == (200, 260, 3)
    assert legend.shape[0] >= 200 and legend.shape[1] > 260
    assert np.array_equal(legend[:200, :260], plain)
    bare = SegmentationResult(result.label_map, result.class_names, result.palette,
                              result.confidence, result.pixel_count)
    with pytest.raises(ValueError, match="does not hold its input photo"):
        bare.overlay()


def test_modelscope_masks_to_image(result):
    masks = result.to_modelscope()["masks"]
    image = semantic_seg_masks_to_image(masks)
    assert image.dtype == np.float64 and image.shape == (200, 260, 3)
    for i, mask in enumerate(masks):  # colour by list position, not class id
        assert (image[mask == 1] == COCO_PANOPTIC_PALETTE[i]).all()


def test_label_image_is_8_or_16_bit_by_class_count(result):
    small = result.label_image()
    assert small.mode == "L" and np.array_equal(np.asarray(small), result.label_map)
    names = tuple(f"class {i}" for i in range(300))
    label_map = np.array([[0, 299], [255, 256]])
    many = SegmentationResult(label_map, names, np.zeros((300, 3), np.uint8),
                              np.zeros(300), np.bincount(label_map.ravel(), minlength=300))
    wide = many.label_image()
    assert wide.mode.startswith("I;16") and np.array_equal(np.asarray(wide), label_map)

"""Slide windows, resampling and the banded merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitadapter.ops import reference_path
from vitadapter.pipeline.merge import merge_views
from vitadapter.pipeline.preprocess import View
from vitadapter.pipeline.resample import linear_taps, resize_rows, resize_width
from vitadapter.pipeline.windows import SlideScores, run_windows, sliding_windows

from .conftest import PHOTO, assert_official_labels, expected, merge_peak


def brute_force_windows(h, w, crop, stride):
    """The official loop, transcribed literally."""
    out = []
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


@pytest.mark.parametrize(("h", "w", "windows"), [
    (896, 1216, [(0, 896, 0, 896), (0, 896, 320, 1216)]),
    (896, 896, [(0, 896, 0, 896)]),
    (1408, 896, [(0, 896, 0, 896), (512, 1408, 0, 896)]),
    (896, 3584, [(0, 896, x, x + 896) for x in (0, 512, 1024, 1536, 2048, 2560, 2688)]),
])
def test_window_grid(h, w, windows):
    got = [(x.y1, x.y2, x.x1, x.x2) for x in sliding_windows(h, w, (896, 896), (512, 512))]
    assert got == windows == brute_force_windows(h, w, 896, 512)


def test_window_grid_matches_the_official_loop_everywhere():
    for h in range(128, 700, 37):
        for w in range(128, 700, 53):
            got = [(x.y1, x.y2, x.x1, x.x2) for x in sliding_windows(h, w, (128, 128), (64, 64))]
            assert got == brute_force_windows(h, w, 128, 64)


@pytest.mark.parametrize(("src", "dst"), [((32, 32), (128, 128)), ((224, 224), (896, 896)),
                                          ((128, 192), (200, 260)), ((96, 128), (48, 61))])
def test_resize_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((5, *src)).astype(np.float32)
    ours = resize_rows(resize_width(x, dst[1]), linear_taps(x.shape[1], dst[0]))
    theirs = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear",
                           align_corners=False)[0].numpy()
    assert np.abs(ours - theirs).max() <= 5e-7
    if dst[0] >= src[0] and dst[1] >= src[1]:
        assert np.array_equal(ours, theirs)  # upsampling: bit-identical


def test_scores_match_the_official_slide_average(reference_set, segmenters):
    exp = expected(reference_set)
    scores = segmenters[reference_set].scores(PHOTO)
    assert scores.shape == (171, 128, 192)
    np.testing.assert_allclose(scores[exp["seg_scores_classes"]], exp["seg_scores"][0],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores.max(0), exp["seg_scores_max"][0], rtol=0, atol=1e-5)
    # Equal labels except at float32 ties (top-2 within 1e-6: another summation order, oneDNN's
    # against MKL's, may pick the other class there).
    top2 = np.sort(scores, axis=0)[-2:]
    differ = scores.argmax(0) != exp["seg_scores_argmax"][0]
    assert not (differ & (top2[1] - top2[0] > 1e-6)).any()
    assert differ.sum() <= 2


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_label_map_matches_the_official_one(reference_set, segmenters, path):
    with reference_path(path == "reference"):
        assert_official_labels(segmenters[reference_set](PHOTO).label_map, reference_set)


@pytest.fixture(scope="module")
def photo_slides(segmenter):
    from vitadapter.pipeline.images import load_image
    from vitadapter.pipeline.preprocess import augmented_views

    cfg = segmenter.config.inference
    views = augmented_views(load_image(PHOTO), cfg, tta=True)
    return [run_windows(v, segmenter.runner, cfg.crop_size, cfg.stride) for v in views]


def test_banded_merge_equals_whole_merge(photo_slides):
    whole = merge_views(photo_slides, band_rows=10_000)
    for rows in (23, 64):  # (a band of one row: tests/test_merge_cells.py)
        banded = merge_views(photo_slides, band_rows=rows)
        assert np.array_equal(banded.labels, whole.labels)
        assert np.array_equal(banded.confidence, whole.confidence)
    single = merge_views(photo_slides[:1], band_rows=10_000)
    assert np.array_equal(merge_views(photo_slides[:1], band_rows=3).labels, single.labels)


def test_merge_memory_is_bounded(segmenter):
    """A 1000x1500 output: the merge must not hold classes x H x W floats (1 GB here)."""
    c = segmenter.config.num_classes
    rng = np.random.default_rng(0)
    view = View(np.zeros((3, 128, 192), np.float32), (96, 128), (1000, 1500))
    slide = SlideScores(view, sliding_windows(128, 192, (128, 128), (64, 64)),
                        [rng.random((c, 32, 32), dtype=np.float32) for _ in range(2)],
                        (128, 128))
    merged, peak = merge_peak([slide])
    assert merged.labels.shape == (1000, 1500)
    assert peak < 200 * 2**20, f"merge peaked at {peak / 2**20:.0f} MiB"


def test_batched_windows_equal_one_at_a_time(segmenter):
    from vitadapter import Segmenter

    batched = Segmenter.from_model(segmenter.runner.model, batch_windows=2)
    a, b = segmenter(PHOTO), batched(PHOTO)
    np.testing.assert_allclose(segmenter.scores(PHOTO), batched.scores(PHOTO), rtol=0,
                               atol=1e-5)
    # A batched GEMM may round differently in the last bit; only exact ties (top-2 score
    # margin below 1e-4, as the reference set marks them) may change class.
    differs = a.label_map != b.label_map
    assert not (differs & ~expected("tiny-upstream")["label_map_tie"]).any()


def test_tta_without_extra_views_equals_single_scale(segmenter):
    from dataclasses import replace

    from vitadapter import Segmenter

    cfg = segmenter.config
    plain_tta = replace(cfg, inference=replace(cfg.inference, tta_ratios=(1.0,),
                                               tta_flip=False))
    model = segmenter.runner.model
    model.config = plain_tta
    try:
        tta = Segmenter.from_model(model, tta=True)(PHOTO)
    finally:
        model.config = cfg
    assert np.array_equal(tta.label_map, segmenter(PHOTO).label_map)


def test_tta_runs_six_views(segmenter, photo_slides):
    assert len(photo_slides) == 6 and [s.view.flipped for s in photo_slides] == [
        False, True] * 3
    result = segmenter(PHOTO, tta=True)
    assert result.label_map.shape == (200, 260)
    assert result.label_map.tolist() != segmenter(PHOTO).label_map.tolist()


@pytest.mark.parametrize("shape", [(13, 260, 3), (1, 1, 3), (400, 20, 3)])
def test_extreme_aspect_ratios_and_tiny_images(segmenter, shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    result = segmenter(image)
    assert result.label_map.shape == shape[:2]
    assert result.pixel_count.sum() == shape[0] * shape[1]

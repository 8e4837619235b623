"""The one-view merge's cell bound (only the contending classes resized) against the full
resize of every class: the same labels bit for bit, the same confidences within rounding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from vitadapter.pipeline import merge
from vitadapter.pipeline.images import load_image
from vitadapter.pipeline.merge import LabelMap, merge_views
from vitadapter.pipeline.preprocess import View, preprocess
from vitadapter.pipeline.windows import SlideScores, run_windows, sliding_windows

from .conftest import PHOTO, assert_official_labels
from .test_torch_merge import synthetic_slide


def merged(slides: Sequence[SlideScores], monkeypatch: pytest.MonkeyPatch,
           **kwargs) -> tuple[LabelMap, LabelMap, list[bool]]:
    """The merge with the cell bound, the merge resizing every class, and for each band of
    the first whether the cell bound took it."""
    taken: list[bool] = []
    one_view_band = merge._one_view_band

    def spy(*args):
        band = one_view_band(*args)
        taken.append(band is not None)
        return band

    with monkeypatch.context() as patch:
        patch.setattr(merge, "_one_view_band", spy)
        fast = merge_views(slides, **kwargs)
        patch.setattr(merge, "_one_view_band", lambda *args: None)
        full = merge_views(slides, **kwargs)
    return fast, full, taken


def assert_same(fast: LabelMap, full: LabelMap) -> None:
    assert np.array_equal(fast.labels, full.labels)
    assert np.array_equal(fast.pixel_count, full.pixel_count)
    np.testing.assert_allclose(fast.confidence, full.confidence, rtol=2e-6, atol=0)


def peaked_slide(num_classes: int, original: tuple[int, int], seed: int = 0) -> SlideScores:
    """Two 32x32 windows of block-wise dominant classes (as a trained model's) on a 128x192
    canvas resized to ``original``."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(2):
        block = rng.random((num_classes, 32, 32), dtype=np.float32) * np.float32(0.05)
        top = rng.integers(0, num_classes, (4, 4)).repeat(8, 0).repeat(8, 1)
        np.put_along_axis(block, top[None], np.float32(0.9), 0)
        scores.append(block)
    view = View(np.zeros((3, 128, 192), np.float32), (128, 180), original)
    return SlideScores(view, sliding_windows(128, 192, (128, 128), (64, 64)), scores, (128, 128))


def test_reference_photo(reference_set, segmenters, monkeypatch):
    segmenter = segmenters[reference_set]
    cfg = segmenter.config.inference
    slide = run_windows(preprocess(load_image(PHOTO), cfg), segmenter.runner, cfg.crop_size,
                        cfg.stride)
    fast, full, taken = merged([slide], monkeypatch)
    assert all(taken)
    assert_same(fast, full)
    assert_official_labels(fast.labels, reference_set)


@pytest.mark.parametrize("original", [(1000, 1500), (200, 260), (41, 67)],
                         ids=["upscaled", "photo", "downscaled"])
def test_trained_like_scores(original, monkeypatch):
    fast, full, taken = merged([peaked_slide(171, original)], monkeypatch, band_rows=97)
    assert all(taken)
    assert len(np.unique(full.labels)) > 10
    assert_same(fast, full)


@pytest.mark.parametrize("flipped", [False, True])
def test_near_ties_take_the_exact_softmax(flipped, monkeypatch):
    """Classes 2 and 5 equal or one ulp apart everywhere: the contested cells' near-tie pixels
    go through the softmax over every class, which decides between them."""
    slide = synthetic_slide(np.random.default_rng(3), flipped, ties=True)
    fast, full, taken = merged([slide], monkeypatch)
    assert all(taken)
    assert {2, 5} <= set(np.unique(full.labels).tolist())
    assert_same(fast, full)


def test_contested_everywhere_resizes_every_class(monkeypatch):
    """Uniform random scores over 171 classes: most cells have many contenders, so bands fall
    back to the full resize (in bands of the every-class budget)."""
    rng = np.random.default_rng(1)
    view = View(np.zeros((3, 128, 192), np.float32), (128, 192), (400, 600))
    slide = SlideScores(view, sliding_windows(128, 192, (128, 128), (64, 64)),
                        [rng.random((171, 32, 32), dtype=np.float32) for _ in range(2)],
                        (128, 128))
    fast, full, taken = merged([slide], monkeypatch)
    assert False in taken
    assert np.array_equal(fast.labels, full.labels)


def test_scores_that_are_not_finite_resize_every_class(monkeypatch):
    slide = peaked_slide(9, (200, 260))
    slide.scores[1][4, 3:9, 20:30] = np.nan
    fast, full, taken = merged([slide], monkeypatch)
    assert not all(taken)
    assert np.array_equal(fast.labels, full.labels)


def test_bands_do_not_change_the_labels(monkeypatch):
    slide = peaked_slide(171, (1000, 1500))
    whole = merge_views([slide], band_rows=10_000)
    for rows in (1, 13, 250):
        banded = merge_views([slide], band_rows=rows)
        assert np.array_equal(banded.labels, whole.labels)
        np.testing.assert_allclose(banded.confidence, whole.confidence, rtol=2e-6, atol=0)


def test_rounding_ties_follow_the_softmax(monkeypatch):
    """Identity geometry (canvas = scores = output): class 5 one ulp above class 2 everywhere,
    the others far below; where their softmax probabilities round equal the official argmax
    is the first of the two, class 2."""
    rng = np.random.default_rng(0)
    scores = rng.random((9, 64, 64), dtype=np.float32) * np.float32(0.4)
    scores[2] = np.float32(0.5) + rng.random((64, 64), dtype=np.float32) * np.float32(0.49)
    scores[5] = np.nextafter(scores[2], np.float32(1))
    want = merge.softmax(scores).argmax(0)
    assert np.count_nonzero(want == 2) > 100 and np.count_nonzero(want == 5) > 100
    view = View(np.zeros((3, 64, 64), np.float32), (64, 64), (64, 64))
    slide = SlideScores(view, sliding_windows(64, 64, (64, 64), (64, 64)), [scores], (64, 64))
    fast, full, taken = merged([slide], monkeypatch)
    assert all(taken)
    assert np.array_equal(fast.labels, want)
    assert np.array_equal(full.labels, want)

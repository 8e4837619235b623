"""The torch slide merge (on the runner's device) against the numpy one, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitadapter.backends.torch_merge import DeviceSlide, merge_on_device
from vitadapter.pipeline.images import load_image
from vitadapter.pipeline.merge import LabelMap, merge_views
from vitadapter.pipeline.preprocess import View, augmented_views
from vitadapter.pipeline.windows import SlideScores, run_windows, sliding_windows

from .conftest import PHOTO, assert_official_labels


def on_device(slide: SlideScores, device: str = "cpu") -> DeviceSlide:
    return DeviceSlide(slide.view, slide.windows,
                       [torch.from_numpy(s).to(device) for s in slide.scores], slide.crop)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def device(request) -> str:
    return request.param


def assert_same(got: LabelMap, want: LabelMap) -> None:
    """Labels and pixel counts bit for bit; confidences within float32 rounding (they sum the
    posteriors in another order, and one view interpolates the class sum: see torch_merge)."""
    assert np.array_equal(got.labels, want.labels)
    assert np.array_equal(got.pixel_count, want.pixel_count)
    np.testing.assert_allclose(got.confidence, want.confidence, rtol=2e-6, atol=0)


@pytest.fixture(scope="module", params=[("tiny-upstream", False), ("tiny-modelscope", False),
                                        ("tiny-upstream", True)], ids=lambda p: "-".join(
                                            (p[0], "tta" if p[1] else "single")))
def reference_slides(request, segmenters):
    name, tta = request.param
    segmenter = segmenters[name]
    cfg = segmenter.config.inference
    views = augmented_views(load_image(PHOTO), cfg, tta=tta)
    return name, [run_windows(v, segmenter.runner, cfg.crop_size, cfg.stride) for v in views]


def test_canvas_is_the_numpy_canvas(reference_slides):
    _, slides = reference_slides
    for slide in slides:
        assert np.array_equal(on_device(slide).canvas().numpy(), slide.canvas())


def test_merge_equals_numpy_on_the_reference_sets(reference_slides, device):
    name, slides = reference_slides
    want = merge_views(slides)
    got = merge_on_device([on_device(s, device) for s in slides])
    # float64 sums of the per-pixel posteriors in another order: within one float32 ulp
    assert_same(got, want)
    if len(slides) == 1:
        assert_official_labels(got.labels, name)


def test_segmenter_uses_the_device_merge(reference_set, segmenters):
    segmenter = segmenters[reference_set]
    cfg = segmenter.config.inference
    views = augmented_views(load_image(PHOTO), cfg)
    want = merge_views([run_windows(v, segmenter.runner, cfg.crop_size, cfg.stride)
                        for v in views])
    result = segmenter(PHOTO)
    assert np.array_equal(result.label_map, want.labels)
    np.testing.assert_allclose(result.confidence, want.confidence, rtol=2e-6, atol=0)


def synthetic_slide(rng: np.random.Generator, flipped: bool, ties: bool) -> SlideScores:
    """Three 16x16 windows of 9 classes upsampled to 48x96 then to a 150x333 photo; with
    ``ties``, classes 2 and 5 hold equal or 1-ulp-apart scores everywhere, 7 a constant."""
    scores = [rng.random((9, 16, 16), dtype=np.float32) for _ in range(3)]
    if ties:
        for s in scores:
            s[5] = s[2]
            s[5, ::2] = np.nextafter(s[2, ::2], np.float32(2))
            s[2] += np.float32(0.6)
            s[5] += np.float32(0.6)
            s[7] = np.float32(1.2)
    view = View(np.zeros((3, 64, 128), np.float32), (48, 96), (150, 333), flipped)
    return SlideScores(view, sliding_windows(64, 128, (64, 64), (32, 32)), scores, (64, 64))


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_merge_equals_numpy_with_ties_and_flips(flipped, ties, device):
    rng = np.random.default_rng(3)
    slide = synthetic_slide(rng, flipped, ties)
    want = merge_views([slide])
    assert_same(merge_on_device([on_device(slide, device)]), want)
    if ties:  # the near-tie pixels really went through the exact softmax
        assert {2, 5} <= set(np.unique(want.labels).tolist())
    views = [slide, synthetic_slide(rng, not flipped, ties)]
    assert_same(merge_on_device([on_device(s, device) for s in views]), merge_views(views))


def test_bands_do_not_change_the_merge():
    rng = np.random.default_rng(4)
    slides = [on_device(synthetic_slide(rng, False, True))]
    whole = merge_on_device(slides, band_rows=10_000)
    for rows in (1, 7, 64):
        banded = merge_on_device(slides, band_rows=rows)
        assert np.array_equal(banded.labels, whole.labels)
        np.testing.assert_allclose(banded.confidence, whole.confidence, rtol=1e-6, atol=0)

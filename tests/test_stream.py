"""The pipelined batch API: photos prepared ahead, windows of several photos batched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vitadapter import ImageError, Segmenter
from vitadapter.pipeline.result import SegmentationResult
from vitadapter.stream import segment_stream

from .conftest import PHOTO, expected
from .helpers import within


def photos() -> list:
    rng = np.random.default_rng(5)
    return [PHOTO, rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), "no-such-photo.png",
            rng.integers(0, 256, (150, 100, 3), dtype=np.uint8)]


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_equals_one_photo_at_a_time(segmenter, workers):
    out = list(segment_stream(segmenter, photos(), workers=workers))
    assert [i for i, _ in out] == [0, 1, 2, 3]
    assert "no-such-photo.png" in str(out[2][1])
    for (_, got), image in zip(out, photos(), strict=True):
        if isinstance(image, str):
            continue
        assert isinstance(got, SegmentationResult)
        want = segmenter.segment(image)
        assert np.array_equal(got.label_map, want.label_map)
        assert np.array_equal(got.confidence, want.confidence)
        assert np.array_equal(got.image, want.image)


def test_stream_batches_windows_across_photos(segmenter):
    calls = []
    forward = segmenter.runner.forward

    def counting(crops):
        calls.append(len(crops))
        return forward(crops)

    batched = Segmenter.from_model(segmenter.runner.model, batch_windows=3)
    batched.runner.forward = counting  # type: ignore[method-assign]
    out = list(segment_stream(batched, [PHOTO, PHOTO]))
    # 2 windows per photo: 4 windows in batches of 3 and 1
    assert calls == [3, 1]
    tie = expected("tiny-upstream")["label_map_tie"]
    for _, got in out:
        assert not ((got.label_map != segmenter.segment(PHOTO).label_map) & ~tie).any()


def failing_on(bad: int, exc: BaseException, monkeypatch) -> None:
    """Make preparing photo ``bad`` (an array whose first pixel is ``bad``) raise ``exc``."""
    import vitadapter.stream as stream

    real = stream.augmented_views

    def views(rgb, *args, **kwargs):
        if rgb[0, 0, 0] == bad:
            raise exc
        return real(rgb, *args, **kwargs)

    monkeypatch.setattr(stream, "augmented_views", views)


def marked(*firsts: int) -> list[np.ndarray]:
    images = []
    for first in firsts:
        image = np.full((40, 50, 3), 100, np.uint8)
        image[0, 0, 0] = first
        images.append(image)
    return images


@pytest.mark.parametrize(("exc", "message"), [
    (MemoryError(), "image of type ndarray: not enough memory to segment it"),
    (cv2.error("resize failed"), "image of type ndarray: OpenCV failed on it"),
])
def test_a_photo_error_of_any_kind_is_that_photo_s_result(segmenter, monkeypatch, exc,
                                                          message):
    failing_on(7, exc, monkeypatch)
    out = within(120, lambda: list(segment_stream(segmenter, marked(1, 7, 2))))
    assert [i for i, _ in out] == [0, 1, 2]
    assert isinstance(out[1][1], ImageError) and message in str(out[1][1])
    assert isinstance(out[0][1], SegmentationResult) and isinstance(out[2][1],
                                                                    SegmentationResult)


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), KeyError("x"), ZeroDivisionError()])
def test_any_other_prefetch_error_stops_the_stream_instead_of_hanging(segmenter, monkeypatch,
                                                                      exc):
    failing_on(7, exc, monkeypatch)
    with pytest.raises(type(exc)):
        within(120, lambda: list(segment_stream(segmenter, marked(1, 7, 2, 3, 4, 5, 6))))


def test_memory_error_while_merging_one_photo_is_that_photo_s_error(segmenter, monkeypatch):
    import vitadapter.stream as stream

    real = stream._Windows.merge

    def merge(self, photo):
        if photo.item.index == 1:
            raise MemoryError
        return real(self, photo)

    monkeypatch.setattr(stream._Windows, "merge", merge)
    out = within(120, lambda: list(segment_stream(segmenter, marked(1, 2, 3))))
    assert "not enough memory" in str(out[1][1])
    assert isinstance(out[2][1], SegmentationResult)

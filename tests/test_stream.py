"""The pipelined batch API: photos prepared ahead, windows of several photos batched."""

from __future__ import annotations

import numpy as np
import pytest

from vitadapter import Segmenter
from vitadapter.pipeline.result import SegmentationResult
from vitadapter.stream import segment_stream

from .conftest import PHOTO, expected


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

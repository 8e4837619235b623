"""The Ray Data predictor: directly, and on a local Ray instance when ray is installed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from vitadapter.errors import ImageError
from vitadapter.ray import RayPredictor

from .conftest import CHECKPOINT, set_config

KWARGS = {"config": str(set_config("tiny-upstream")), "checkpoint": str(CHECKPOINT),
          "device": "cpu"}


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 60, 3), (90, 70, 3))]


def test_predictor_labels_a_batch_as_the_segmenter_does(segmenter):
    predictor = pickle.loads(pickle.dumps(RayPredictor))(**KWARGS)
    out = predictor({"image": images(), "path": ["a.png", "b.png"]})
    assert out["path"] == ["a.png", "b.png"]
    for got, image in zip(out["label_map"], images(), strict=True):
        assert got.dtype == np.uint8
        assert np.array_equal(got, segmenter.segment(image).label_map)
    with pytest.raises(ImageError, match=r"no 'image' column \(it has path\)"):
        predictor({"path": ["a.png"]})


def test_map_batches_on_a_local_ray(segmenter):
    ray = pytest.importorskip("ray", reason="ray is optional: pip install vitadapter[ray]")
    # Ray starts its workers at nice 15: beside other busy processes they got ~3 % of a core
    # (the actor's start took 3 minutes instead of 6 s); at 0 they compete as the test does.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             _system_config={"worker_niceness": 0})
    try:
        ds = ray.data.from_items([{"image": image} for image in images()])
        rows = ds.map_batches(RayPredictor, fn_constructor_kwargs=KWARGS, batch_size=2,
                              concurrency=1).take_all()
    finally:
        ray.shutdown()
    for row, image in zip(rows, images(), strict=True):
        assert np.array_equal(row["label_map"], segmenter.segment(image).label_map)

"""A model with NaN weights: a clear error saying the scores are not finite, on every merge
path, instead of an index error deep inside or a silent all-one-class label map."""

from __future__ import annotations

import pytest
import torch

from vitadapter import Segmenter, build_model, load_checkpoint
from vitadapter.backends.torch_merge import check_finite_on_device, run_windows_on_device
from vitadapter.errors import InferenceError
from vitadapter.pipeline.images import load_image
from vitadapter.pipeline.preprocess import augmented_views
from vitadapter.stream import segment_stream

from .conftest import CHECKPOINT, PHOTO, set_config

MESSAGE = r"the model produced non-finite scores \(NaN or inf\): its weights hold NaN or inf"


@pytest.fixture(scope="module")
def nan_segmenter() -> Segmenter:
    model = build_model(set_config("tiny-upstream"), device="meta")
    load_checkpoint(model, CHECKPOINT)
    with torch.no_grad():
        model.backbone.patch_embed.proj.weight[0, 0, 0, 0] = float("nan")  # NaN everywhere after
    return Segmenter.from_model(model)


def test_nan_weights_are_reported_on_every_path(nan_segmenter):
    with pytest.raises(InferenceError, match=MESSAGE):
        nan_segmenter.segment(PHOTO)  # CPU: the numpy merge
    with pytest.raises(InferenceError, match=MESSAGE):  # the pipelined stream ends with it
        list(segment_stream(nan_segmenter, [PHOTO]))
    with pytest.raises(InferenceError, match=MESSAGE):  # the runner's own device merge
        nan_segmenter.runner.slide_merge(
            augmented_views(load_image(PHOTO), nan_segmenter.config.inference, False),
            nan_segmenter.config.inference.crop_size, nan_segmenter.config.inference.stride)


def test_the_device_check_sees_every_window(nan_segmenter):
    runner = nan_segmenter.runner
    cfg = nan_segmenter.config.inference
    [view] = augmented_views(load_image(PHOTO), cfg, False)
    slide = run_windows_on_device(view, runner.forward, torch.device("cpu"), cfg.crop_size,
                                  cfg.stride, 1)
    assert len(slide.scores) == 2
    finite = [torch.nan_to_num(scores) for scores in slide.scores]
    for window in range(2):
        slide.scores[:] = finite
        check_finite_on_device([slide])
        slide.scores[window] = slide.scores[window].clone()
        slide.scores[window][5, 1, 2] = float("inf")
        with pytest.raises(InferenceError, match=MESSAGE):
            check_finite_on_device([slide])


def test_the_service_answers_500_saying_why(nan_segmenter):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vitadapter.serve.app import create_app

    with TestClient(create_app(nan_segmenter)) as client:
        answer = client.post("/v1/segment", content=PHOTO.read_bytes())
    assert answer.status_code == 500
    assert answer.json()["error"].startswith("the model produced non-finite scores (NaN or inf)")

"""The ViT-Adapter / BEiT-Adapter + UperNet models against the tensors the official code
produced (tiny-vit-adapter-upernet, tiny-beit-adapter-upernet), stage by stage and end to end."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vitadapter import Segmenter, build_model, load_checkpoint
from vitadapter.ops import reference_path
from vitadapter.pipeline.images import load_image
from vitadapter.pipeline.merge import merge_views
from vitadapter.pipeline.preprocess import preprocess
from vitadapter.pipeline.windows import SlideScores, Window, run_windows

from .conftest import PHOTO, REFERENCE, UPERNET_SETS, assert_official_labels, expected, set_config
from .test_parity import assert_close


@pytest.fixture(scope="module", params=UPERNET_SETS)
def upernet_set(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=["fast", "reference"])
def kernel_path(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def crop0(upernet_models, upernet_set, kernel_path):
    """Window 0 (rows 0:128, cols 0:128) through the model and its auxiliary head."""
    model = upernet_models[upernet_set]
    # contiguous, as the runner's window crops are (oneDNN may pick another kernel for a strided
    # input, and round differently)
    crop = torch.from_numpy(np.ascontiguousarray(expected(upernet_set)["img"][:, :, :, :128]))
    with torch.inference_mode(), reference_path(kernel_path == "reference"):
        out = model.inspect(crop)
        aux = model.auxiliary_head(out.features)
    return out, aux


def test_backbone_features(upernet_set, crop0):
    exp, (out, _) = expected(upernet_set), crop0
    assert len(out.features) == 4
    for i, feat in enumerate(out.features, start=1):
        assert_close(feat, exp[f"crop0_feats_{i}"])


def test_pyramid_pooling_and_fused_feature(upernet_set, crop0):
    exp, (out, _) = expected(upernet_set), crop0
    assert_close(out.head.psp, exp["crop0_psp_out"])
    assert_close(out.head.feature, exp["crop0_head_feature"])


def test_logits_at_a_quarter_and_their_argmax(upernet_set, crop0):
    exp, (out, _) = expected(upernet_set), crop0
    assert_close(out.scores[:, exp["crop0_seg_classes"]], exp["crop0_seg"])
    assert_close(out.scores.max(1).values, exp["crop0_seg_max"])
    assert np.array_equal(out.scores.argmax(1).numpy(), exp["crop0_seg_argmax"])


def test_auxiliary_head_loads_and_matches(upernet_set, crop0):
    exp, (_, aux) = expected(upernet_set), crop0
    assert_close(aux, exp["crop0_aux_seg"])


@pytest.fixture(scope="module")
def upernet_segmenters(upernet_models) -> dict[str, Segmenter]:
    return {name: Segmenter.from_model(model) for name, model in upernet_models.items()}


@pytest.fixture(scope="module")
def slides(upernet_segmenters, upernet_set, kernel_path) -> SlideScores:
    """The photo's windows through the Segmenter's runner (the model's ``forward``)."""
    segmenter = upernet_segmenters[upernet_set]
    cfg = segmenter.config.inference
    view = preprocess(load_image(PHOTO), cfg)
    with reference_path(kernel_path == "reference"):
        return run_windows(view, segmenter.runner, cfg.crop_size, cfg.stride)


def test_forward_returns_the_logits(slides, crop0):
    out, _ = crop0
    assert slides.windows[0] == Window(0, 128, 0, 128)
    assert np.array_equal(slides.scores[0], out.scores[0].numpy())


def test_slide_average_matches_the_official_one(upernet_set, slides):
    """The per-crop logits at 1/4, bilinearly resized to the crop, summed and averaged: the
    official slide inference of an UperNet EncoderDecoder."""
    exp = expected(upernet_set)
    scores = slides.canvas()
    assert scores.shape[1:] == (128, 192)
    scale = float(np.abs(exp["seg_scores"]).max())
    np.testing.assert_allclose(scores[exp["seg_scores_classes"]], exp["seg_scores"][0],
                               rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(scores.max(0), exp["seg_scores_max"][0], rtol=0,
                               atol=1e-4 * scale)
    assert np.array_equal(scores.argmax(0), exp["seg_scores_argmax"][0])


def test_label_map_matches_the_official_one(upernet_set, slides):
    merged = merge_views([slides], logits=True)
    assert_official_labels(merged.labels, upernet_set)
    # The confidence of logits is the mean softmax probability of the winning class.
    present = merged.pixel_count > 0
    assert ((merged.confidence[present] > 1 / 150) & (merged.confidence[present] <= 1)).all()


def test_segmenter_end_to_end(upernet_segmenters):
    result = upernet_segmenters["tiny-vit-adapter-upernet"](PHOTO)
    assert_official_labels(result.label_map, "tiny-vit-adapter-upernet")
    assert result.class_names[:3] == ("wall", "building", "sky")
    present = result.pixel_count > 0
    assert ((result.confidence[present] > 1 / 150) & (result.confidence[present] <= 1)).all()


def test_checkpoint_reports_the_auxiliary_head(caplog):
    model = build_model(set_config("tiny-vit-adapter-upernet"), device="meta")
    with caplog.at_level(logging.INFO, logger="vitadapter"):
        load_checkpoint(model, REFERENCE / "tiny-vit-adapter-upernet" / "checkpoint.pth")
    assert "has the auxiliary FCN head (8 keys)" in caplog.text

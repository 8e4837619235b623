"""Our model against the tensors the official (and ModelScope) code produced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitadapter import build_model, load_checkpoint
from vitadapter.ops import reference_path

from .conftest import CHECKPOINT, expected, set_config


def assert_close(actual: torch.Tensor, reference: np.ndarray, rel: float = 1e-4) -> None:
    """Equal within ``rel`` of the reference's scale (the sets' suggested tolerance)."""
    actual_np = actual.detach().numpy()
    assert actual_np.shape == reference.shape
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(actual_np, reference, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module", params=["fast", "reference"])
def crop0_outputs(request, tiny_models):
    """Window 0 (rows 0:128, cols 0:128) of each set through the fast (default) and the
    reference path: both must match the official tensors."""
    outputs = {}
    for name, model in tiny_models.items():
        crop = torch.from_numpy(expected(name)["img"][:, :, :, :128])
        with torch.inference_mode(), reference_path(request.param == "reference"):
            outputs[name] = model.inspect(crop)
    return outputs


def test_backbone_features(reference_set, crop0_outputs):
    exp, out = expected(reference_set), crop0_outputs[reference_set]
    for i, feat in enumerate(out.features, start=1):
        assert_close(feat, exp[f"crop0_feats_{i}"])


def test_pixel_decoder_memories(reference_set, crop0_outputs):
    exp, out = expected(reference_set), crop0_outputs[reference_set]
    names = [k for k in exp if k.startswith("crop0_memory_")]
    assert len(names) >= 2
    for name in names:
        assert_close(out.head.memories[int(name[-1])], exp[name])


def test_decoder_predictions_of_every_layer(reference_set, crop0_outputs):
    exp, out = expected(reference_set), crop0_outputs[reference_set]
    assert_close(torch.stack(out.head.cls_logits), exp["crop0_cls_all_layers"])
    assert_close(out.head.cls_logits[-1], exp["crop0_cls"])
    assert_close(out.head.mask_logits[-1], exp["crop0_mask"])


def test_semantic_scores_and_argmax(reference_set, crop0_outputs):
    exp, out = expected(reference_set), crop0_outputs[reference_set]
    scores = out.scores
    np.testing.assert_allclose(scores[:, exp["crop0_seg_classes"]].numpy(), exp["crop0_seg"],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores.max(1).values.numpy(), exp["crop0_seg_max"], rtol=0,
                               atol=1e-5)
    assert np.array_equal(scores.argmax(1).numpy(), exp["crop0_seg_argmax"])


def test_forward_returns_the_semantic_scores(tiny_models):
    model = tiny_models["tiny-upstream"]
    crop = torch.from_numpy(expected("tiny-upstream")["img"][:, :, :, 64:192])
    with torch.inference_mode():
        scores = model(crop)
        assert torch.equal(scores, model.inspect(crop).scores)
    assert scores.shape == (1, 171, 32, 32)


def test_behaviour_switch_matters():
    """Loading the ModelScope set's weights with the official behaviour must not reproduce
    ModelScope's numbers: the switch is what makes the difference."""
    model = build_model(set_config("tiny-modelscope"), behaviour="official", device="meta")
    load_checkpoint(model, CHECKPOINT)
    exp = expected("tiny-modelscope")
    with torch.inference_mode():
        feats = model.inspect(torch.from_numpy(exp["img"][:, :, :, :128])).features
    gap = np.abs(feats[0].numpy() - exp["crop0_feats_1"]).max()
    assert gap > 0.1 * np.abs(exp["crop0_feats_1"]).max()


def test_crop_of_the_wrong_size_is_refused(tiny_models):
    with pytest.raises(ValueError, match=r"takes 128x128 crops .* got 96x128"):
        tiny_models["tiny-upstream"](torch.zeros(1, 3, 96, 128))

"""The Mask2Former training loss against one official forward_train + backward step
(reference set ``train-step-m2f``: tiny BEiT-Adapter + Mask2Former, 2 images of 128x128)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from vitadapter import build_model, load_checkpoint
from vitadapter.ops import reference_path
from vitadapter.training import (
    Mask2FormerLoss,
    Mask2FormerLossConfig,
    ReplayPoints,
    masks_from_semantic,
    point_sample,
    uncertain_points,
)

from .conftest import CHECKPOINT, REFERENCE, single_thread

SET = REFERENCE / "train-step-m2f"
NUM_SETS, NUM_IMAGES = 4, 2
# The official head returns its keys unprefixed; the segmentor adds "decode.".
PREFIX = "decode."
ZERO_GRAD = ("backbone.spm.fc1.bias", "backbone.up.bias")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(SET / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def reference_config() -> Mask2FormerLossConfig:
    """The official defaults, with the set's 256 points (official: 12544) for both steps."""
    defaults = Mask2FormerLossConfig()
    return replace(defaults, num_points=256, matcher=replace(defaults.matcher, num_points=256))


def replayed_draws(ref: dict[str, np.ndarray]) -> ReplayPoints:
    return ReplayPoints(torch.from_numpy(ref[str(name)]) for name in ref["rand_call_order"])


def ground_truth(ref: dict[str, np.ndarray]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    labels = [torch.from_numpy(ref[f"gt_labels_img{b}"]) for b in range(NUM_IMAGES)]
    masks = [torch.from_numpy(ref[f"gt_masks_img{b}"]).long() for b in range(NUM_IMAGES)]
    return labels, masks


def relative_error(value: float, expected: float) -> float:
    return abs(value - expected) / abs(expected)


def test_config_defaults_are_the_official_recipe():
    cfg = Mask2FormerLossConfig()
    assert (cfg.class_weight, cfg.no_object_weight, cfg.mask_weight, cfg.dice_weight) == (
        2.0, 0.1, 5.0, 5.0)
    assert (cfg.num_points, cfg.oversample_ratio, cfg.importance_ratio) == (12544, 3.0, 0.75)
    m = cfg.matcher
    assert (m.class_cost, m.mask_cost, m.dice_cost, m.num_points) == (2.0, 5.0, 5.0, 12544)


def test_ground_truth_from_the_label_map_is_tomask(ref):
    for b in range(NUM_IMAGES):
        labels, masks = masks_from_semantic(torch.from_numpy(ref["gt_semantic_seg"][b, 0]))
        assert labels.dtype == torch.int64
        assert np.array_equal(labels.numpy(), ref[f"gt_labels_img{b}"])
        assert np.array_equal(masks.numpy(), ref[f"gt_masks_img{b}"])


def test_point_sample_is_grid_sample_on_unit_coordinates():
    grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    # Pixel centres of a 4x4 map lie at (i + 0.5) / 4.
    points = torch.tensor([[[0.125, 0.125], [0.375, 0.125], [0.125, 0.375], [0.25, 0.125]]])
    assert torch.allclose(point_sample(grid, points), torch.tensor([[[0.0, 1.0, 4.0, 0.5]]]))


def test_matches_are_the_official_ones(ref):
    loss = Mask2FormerLoss(reference_config(), draw=replayed_draws(ref))
    labels, masks = ground_truth(ref)
    cls_all, mask_all = torch.from_numpy(ref["all_cls_scores"]), torch.from_numpy(
        ref["all_mask_preds"])
    for layer in range(NUM_SETS):
        # Skip the loss's own draws: replay only what the matcher of this set would see.
        loss.draw = ReplayPoints(torch.from_numpy(ref[f"match_points_l{layer}_img{b}"])
                                 for b in range(NUM_IMAGES))
        matches = loss.match(cls_all[layer], mask_all[layer], labels, masks)
        for b, (queries, gts) in enumerate(matches):
            got = torch.stack([queries, gts], 1).numpy()
            assert np.array_equal(got, ref[f"match_l{layer}_img{b}"]), (layer, b)


def test_importance_sampling_reproduces_the_official_points(ref):
    mask_all = torch.from_numpy(ref["all_mask_preds"])
    for layer in range(NUM_SETS):
        preds = torch.cat([mask_all[layer, b, ref[f"match_l{layer}_img{b}"][:, 0]]
                           for b in range(NUM_IMAGES)])
        draw = ReplayPoints([torch.from_numpy(ref[f"mask_points_candidates_l{layer}"]),
                             torch.from_numpy(ref[f"mask_points_random_l{layer}"])])
        points = uncertain_points(preds, 256, 3.0, 0.75, draw)
        assert draw.remaining == 0
        assert torch.equal(points, torch.from_numpy(ref[f"mask_points_l{layer}"])), layer


def test_every_loss_term_equals_the_official_value(ref):
    draw = replayed_draws(ref)
    loss = Mask2FormerLoss(reference_config(), draw=draw)
    labels, masks = ground_truth(ref)
    cls_all, mask_all = torch.from_numpy(ref["all_cls_scores"]), torch.from_numpy(
        ref["all_mask_preds"])
    losses = loss(list(cls_all), list(mask_all), labels, masks)
    assert draw.remaining == 0
    names = [str(n) for n in ref["loss_names"]]
    assert [PREFIX + k for k in losses] == names
    errors = {k: relative_error(float(v), float(ref[PREFIX + k])) for k, v in losses.items()}
    assert max(errors.values()) < 1e-5, errors
    total = float(sum(losses.values()))
    assert relative_error(total, float(ref["loss_total"])) < 1e-5


@pytest.fixture(scope="module")
def training_step(ref):
    """Our model in training mode through one official step: losses and gradients.

    One thread and the reference kernels (the official step ran grid_sample deformable
    attention on one thread): one pre-activation of the pixel decoder's last FFN (image 0,
    token 127, channel 30) lies about 1e-6 from zero, and float32 sums in any other order (two
    threads, or the fast deformable attention's gather-sum) switch its ReLU off, which moves
    the gradient norms of the layers below by up to 5e-3 relative: a tie, like the label maps'
    near-tie pixels. Summed as the reference does, every norm agrees within 3e-6; the fast
    path's gradients equal the reference's op by op (tests/test_ms_deform_attn_backward.py).
    """
    model = build_model(REFERENCE / "tiny-upstream" / "config.json", device="meta")
    load_checkpoint(model, CHECKPOINT)
    model.train()
    labels, masks = ground_truth(ref)
    with single_thread(), reference_path():
        feats = model.backbone(torch.from_numpy(ref["img"]))
        head = model.decode_head(feats)
        losses = Mask2FormerLoss(reference_config(), draw=replayed_draws(ref))(
            head.cls_logits, head.mask_logits, labels, masks)
        sum(losses.values()).backward()
    return model, feats, head, {k: v.detach() for k, v in losses.items()}


def test_training_mode_forward_matches(ref, training_step):
    _, feats, head, losses = training_step
    for i, feat in enumerate(feats, start=1):
        np.testing.assert_allclose(feat.detach().numpy(), ref[f"feats_{i}"], rtol=0,
                                   atol=1e-4 * np.abs(ref[f"feats_{i}"]).max())
    for name, value in (("cls_logits", "all_cls_scores"), ("mask_logits", "all_mask_preds")):
        ours = torch.stack(getattr(head, name)).detach().numpy()
        np.testing.assert_allclose(ours, ref[value], rtol=0, atol=1e-4 * np.abs(ref[value]).max())
    errors = {k: relative_error(float(v), float(ref[PREFIX + k])) for k, v in losses.items()}
    assert max(errors.values()) < 1e-4, errors


def test_gradient_norms_equal_the_official_ones(ref, training_step):
    model = training_step[0]
    params = dict(model.named_parameters())
    names = [str(n) for n in ref["grad_norm_names"]]
    assert sorted(params) == sorted(names)
    errors = {}
    for name, expected in zip(names, ref["grad_norm_values"], strict=True):
        grad = params[name].grad
        assert grad is not None, name
        errors[name] = relative_error(float(grad.double().norm()), float(expected))
    # Two biases feed only into batch-statistics BatchNorm, so their exact gradient is zero;
    # both sides hold float32 rounding noise (about 3e-7) there, compared in absolute terms.
    for name in ZERO_GRAD:
        assert float(params[name].grad.norm()) < 1e-5
        assert errors.pop(name) is not None
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])


def test_random_points_are_reproducible_and_an_empty_image_is_handled(ref):
    from vitadapter.training import RandomPoints

    cls_all = list(torch.from_numpy(ref["all_cls_scores"]))
    mask_all = [m.clone().requires_grad_() for m in torch.from_numpy(ref["all_mask_preds"])]
    labels, masks = ground_truth(ref)
    labels[1], masks[1] = labels[1][:0], masks[1][:0]  # image 1 without ground truth

    def run() -> dict[str, torch.Tensor]:
        draw = RandomPoints(torch.Generator().manual_seed(0))
        return Mask2FormerLoss(reference_config(), draw=draw)(cls_all, mask_all, labels, masks)

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.isfinite(v) for v in first.values())
    sum(first.values()).backward()
    assert mask_all[-1].grad[1].abs().sum() == 0  # no mask loss on the empty image

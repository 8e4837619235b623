"""The metric function against hand-computed values and an mmseg-style histc computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitadapter.evaluation import Areas, compute_metrics, intersect_and_union, percent
from vitadapter.evaluation.report import format_tables

NAN = float("nan")

# 4 classes. Class 0 is in both, 1 only in predictions, 2 only in labels, 3 nowhere; 255 is
# ignored (the predictions under it, 3 x class 1 and 1 x class 0, must not count).
PRED = np.array([[0, 0, 1, 1],
                 [0, 1, 1, 0],
                 [0, 0, 1, 1]])
LABEL = np.array([[0, 0, 0, 2],
                  [0, 255, 255, 2],
                  [255, 0, 255, 2]], np.uint8)


def test_hand_computed_areas_and_metrics():
    areas = intersect_and_union(PRED, LABEL, 4)
    # kept pixels (label != 255): (0,0) (0,1) (0,2) (0,3) (1,0) (1,3) (2,1) (2,3)
    # pred there:                   0     0     1     1     0     0     0     1
    # label there:                  0     0     0     2     0     2     0     2
    assert areas.intersect.tolist() == [4, 0, 0, 0]
    assert areas.pred.tolist() == [5, 3, 0, 0]
    assert areas.label.tolist() == [5, 0, 3, 0]
    assert areas.union.tolist() == [6, 3, 3, 0]
    metrics = compute_metrics(areas)
    assert metrics.all_acc == 4 / 8
    np.testing.assert_array_equal(metrics.iou, [4 / 6, 0.0, 0.0, NAN])
    np.testing.assert_array_equal(metrics.acc, [4 / 5, NAN, 0.0, NAN])
    assert metrics.miou == pytest.approx((4 / 6 + 0 + 0) / 3, abs=1e-15)
    assert metrics.macc == pytest.approx((4 / 5 + 0) / 2, abs=1e-15)
    assert [percent(v) for v in metrics.iou] == [66.67, 0.0, 0.0, None]
    assert (percent(metrics.all_acc), percent(metrics.miou), percent(metrics.macc)) == (
        50.0, 22.22, 40.0)


def test_areas_accumulate_over_images():
    other_pred = np.array([[3, 3], [2, 0]])
    other_label = np.array([[3, 1], [2, 255]], np.uint8)
    total = intersect_and_union(PRED, LABEL, 4) + intersect_and_union(other_pred, other_label, 4)
    assert total.intersect.tolist() == [4, 0, 1, 1]
    assert total.pred.tolist() == [5, 3, 1, 2]
    assert total.label.tolist() == [5, 1, 4, 1]
    metrics = compute_metrics(total)
    assert metrics.all_acc == 6 / 11
    np.testing.assert_array_equal(metrics.iou, [4 / 6, 0 / 4, 1 / 4, 1 / 2])
    assert np.array_equal(Areas.from_array(total.to_array()).union, total.union)


def test_nothing_labelled_gives_nan_everywhere():
    metrics = compute_metrics(intersect_and_union(PRED, np.full(PRED.shape, 255, np.uint8), 4))
    assert math.isnan(metrics.all_acc) and math.isnan(metrics.miou)
    assert math.isnan(metrics.macc)


def mmseg_style(preds, labels, num_classes, ignore_index=255):
    """An independent computation the way mmseg 0.x's eval_metrics does it: torch.histc on
    float32 per image, float64 totals, then the ratios."""
    totals = torch.zeros((4, num_classes), dtype=torch.float64)
    for pred, label in zip(preds, labels, strict=True):
        pred, label = torch.from_numpy(pred), torch.from_numpy(label)
        keep = label != ignore_index
        pred, label = pred[keep], label[keep]
        hit = pred[pred == label]
        rows = [torch.histc(x.float(), bins=num_classes, min=0, max=num_classes - 1)
                for x in (hit, pred, label)]
        totals += torch.stack([rows[0], rows[1] + rows[2] - rows[0], rows[1], rows[2]])
    inter, union, _, label_area = totals
    return (inter.sum() / label_area.sum()).item(), (inter / union).numpy(), \
        (inter / label_area).numpy()


def test_equals_an_mmseg_style_histc_computation():
    rng = np.random.default_rng(4)
    num_classes = 20  # 0..15 predicted and labelled, 16-17 only labelled, 18 only predicted,
    preds, labels = [], []  # 19 nowhere
    for h, w in [(37, 50), (64, 48), (20, 90)]:
        pred = rng.integers(0, 16, (h, w))
        label = np.where(rng.random((h, w)) < 0.6, pred,
                         rng.integers(0, 18, (h, w))).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        pred[rng.random((h, w)) < 0.05] = 18
        preds.append(pred)
        labels.append(label)
    total = sum((intersect_and_union(p, lab, num_classes) for p, lab in zip(preds, labels,
                                                                            strict=True)),
                Areas.zeros(num_classes))
    ours = compute_metrics(total)
    all_acc, iou, acc = mmseg_style(preds, labels, num_classes)
    assert ours.all_acc == all_acc
    np.testing.assert_array_equal(ours.iou, iou)
    np.testing.assert_array_equal(ours.acc, acc)
    assert iou[16] == acc[16] == iou[18] == 0.0 and np.isnan(acc[18])
    assert np.isnan(iou[19]) and np.isnan(acc[19]) and 0 < ours.miou < 1


def test_refuses_mismatched_or_out_of_range_input():
    with pytest.raises(ValueError, match=r"prediction shape \(3, 4\) differs from label shape"):
        intersect_and_union(PRED, LABEL[:2], 4)
    with pytest.raises(ValueError, match=r"label value 7 is outside 0\.\.3"):
        intersect_and_union(PRED, np.where(LABEL == 2, 7, LABEL), 4)
    with pytest.raises(ValueError, match="prediction value 4 is outside"):
        intersect_and_union(PRED + 3, LABEL, 4)


def test_percent_rounds_as_mmseg_prints():
    assert percent(0.47214999) == 47.21
    assert percent(0.4721500001) == 47.22
    assert percent(1.0) == 100.0
    assert percent(NAN) is None


def test_tables_print_nan_for_absent_classes():
    lines = format_tables(intersect_and_union(PRED, LABEL, 4), ["a", "b", "c", "d"]).splitlines()
    assert lines[0] == "per class results:"
    assert lines[4:8] == ["|   a   | 66.67 | 80.00 |", "|   b   |  0.00 |  nan  |",
                          "|   c   |  0.00 |  0.00 |", "|   d   |  nan  |  nan  |"]
    assert lines[-6:] == ["Summary:", "+-------+-------+-------+", "|  aAcc |  mIoU |  mAcc |",
                          "+-------+-------+-------+", "| 50.00 | 22.22 | 40.00 |",
                          "+-------+-------+-------+"]

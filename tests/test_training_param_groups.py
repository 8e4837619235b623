"""Layer-decay parameter groups and the lr schedule against the official recipe."""

from __future__ import annotations

import json

import pytest
import torch

from vitadapter import build_model
from vitadapter.training import PolySchedule, PolyScheduleConfig, layer_decay_param_groups, lr_at

from .conftest import REFERENCE

SET = REFERENCE / "train-step-m2f"


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads((SET / "param_groups.json").read_text())


@pytest.fixture(scope="module")
def groups() -> list[dict]:
    model = build_model(REFERENCE / "tiny-upstream" / "config.json", device="meta")
    return layer_decay_param_groups(model, lr=2e-5, weight_decay=0.05, decay_rate=0.9,
                                    num_layers=4)


def test_every_parameter_gets_the_official_group(official, groups):
    ours = {name: group for group in groups for name in group["param_names"]}
    assert sorted(ours) == sorted(official["params"])
    for name, expected in official["params"].items():
        group = ours[name]
        assert group["group_name"] == expected["group_name"], name
        assert group["lr_scale"] == pytest.approx(expected["lr_scale"], rel=1e-12), name
        assert group["lr"] == pytest.approx(expected["lr"], rel=1e-12), name
        assert group["weight_decay"] == expected["weight_decay"], name


def test_group_summary_and_quirks(official, groups):
    summary = {g["group_name"]: (len(g["params"]), g["weight_decay"]) for g in groups}
    assert summary == {name: (g["n_params"], g["weight_decay"])
                       for name, g in official["groups"].items()}
    names = {name: g["group_name"] for g in groups for name in g["param_names"]}
    assert names["backbone.cls_token"] == "layer_0_decay"  # the official name-test quirk
    assert names["backbone.level_embed"] == "layer_5_decay"
    assert names["decode_head.level_embed.weight"] == "layer_0_decay"


def test_groups_build_an_optimizer(groups):
    model = torch.nn.Linear(2, 2)
    param_groups = layer_decay_param_groups(model, 1e-3, 0.05, 0.9, num_layers=4)
    assert [g["group_name"] for g in param_groups] == ["layer_5_decay", "layer_5_no_decay"]
    optimizer = torch.optim.AdamW(param_groups, lr=1e-3, betas=(0.9, 0.999))
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize(("iteration", "expected"), [
    (0, 2e-11),                # poly 2e-5 times the warm-up ratio 1e-6
    (750, 9.90625990625e-6),   # poly 1.98125e-5 times 1 - 0.5 * (1 - 1e-6)
    (1499, 1.96121665130835e-5),  # poly 1.962525e-5 times 1 - (1 / 1500) * (1 - 1e-6)
    (1500, 1.9625e-5),         # warm-up over: the poly value 2e-5 * (1 - 1500 / 80000)
    (40000, 1e-5),
    (79999, 2.5e-10),          # the last iteration
])
def test_poly_schedule_with_linear_warmup(iteration, expected):
    assert lr_at(iteration, 2e-5, 80000) == pytest.approx(expected, rel=1e-12)


def test_schedule_scales_every_group_from_its_own_initial_lr():
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [weights[0]], "lr": 2e-5},
                                   {"params": [weights[1]], "lr": 2e-5 * 0.9}])
    schedule = PolySchedule(PolyScheduleConfig(max_iters=80000))
    for iteration in (0, 40000):
        schedule.apply(optimizer, iteration)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-5, 0.9e-5], rel=1e-12)

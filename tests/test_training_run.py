"""``vitadapter train`` on the tiny model: it learns, resumes exactly, refuses bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from vitadapter import Segmenter
from vitadapter.cli import main
from vitadapter.errors import ConfigError, DatasetError, TrainingError
from vitadapter.training.init import resize_relative_position_table
from vitadapter.training.trainer import LATEST, LOG_FILE, STATE_FILE, Trainer, TrainSettings

from .conftest import CHECKPOINT, REFERENCE
from .test_training_data import write_custom

TINY = str(REFERENCE / "tiny-upstream" / "config.json")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_custom(root, count=4, size=(64, 64))
    shutil.copytree(root / "images" / "train", root / "images" / "val")
    shutil.copytree(root / "annotations" / "train", root / "annotations" / "val")
    return root


def settings(data_root: Path, work_dir: Path, **changes) -> TrainSettings:
    """The tiny model at a 64px crop (its 128px tables resized by --init), few points."""
    base = TrainSettings(data_root, "custom", work_dir, model=TINY, init=str(CHECKPOINT),
                         iters=8, batch_size=2, crop=64, img_scale=(64, 64), lr=1e-3,
                         warmup_iters=0, num_points=64, eval_interval=0, log_interval=1,
                         save_interval=100, num_workers=0)
    return replace(base, **changes)


def test_short_run_learns_the_shapes(data_root, tmp_path):
    trainer = Trainer(settings(data_root, tmp_path, eval_interval=8, drop_path=0.0))
    before = trainer.evaluate()
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    after = [r["mIoU"] for r in records if r.get("mode") == "val"][-1]
    assert len(losses) == 8 and {"lr", "s_per_iter", "decode.d0.loss_cls"} <= set(records[1])
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses
    assert after > before + 0.05, (before, after)
    # The work dir serves inference as it is.
    seg = Segmenter(config=tmp_path / "config.json", checkpoint=tmp_path / LATEST)
    assert seg.class_names == ("background", "square", "disc")
    assert seg.segment(data_root / "images" / "val" / "img0.png").label_map.shape == (64, 64)
    assert (tmp_path / "best.safetensors").exists()


def test_resume_continues_as_if_never_stopped(data_root, tmp_path):
    common = {"iters": 2, "batch_size": 1, "drop_path": 0.3}
    straight = Trainer(settings(data_root, tmp_path / "a", **common))
    straight.run()
    first = Trainer(settings(data_root, tmp_path / "b", **common))
    first.run(until=1)
    state = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert state["iteration"] == 1 and state["data_order"]["next_batch"] == 1
    resumed = Trainer(settings(data_root, tmp_path / "b", resume=True, **common))
    assert resumed.iteration == 1
    resumed.run()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = [json.loads(x)["loss"] for x in (tmp_path / "a" / LOG_FILE).read_text().splitlines()]
    log_b = [json.loads(x)["loss"] for x in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert log_a == log_b


def test_resume_with_other_settings_is_refused_and_keeps_the_work_dir(data_root, tmp_path):
    Trainer(settings(data_root, tmp_path, iters=1, batch_size=1)).run()
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TrainingError, match=r"other settings \(.*crop: 64 in the work dir, 96"):
        Trainer(settings(data_root, tmp_path, iters=1, batch_size=1, crop=96, resume=True))
    with pytest.raises(TrainingError, match="already holds a training run; pass --resume"):
        Trainer(settings(data_root, tmp_path, iters=1, batch_size=1))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_bad_input_gets_one_clear_error(data_root, tmp_path):
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "classes.json").write_text('{"classes": ["a", "b"]}')
    with pytest.raises(DatasetError, match="no images"):
        Trainer(settings(empty, tmp_path / "w1"))
    with pytest.raises(ConfigError, match=r"--crop 192 is larger than the model supports"):
        Trainer(settings(data_root, tmp_path / "w2", crop=192))
    with pytest.raises(ConfigError, match=r"--crop 80: the model needs a multiple of 32"):
        Trainer(settings(data_root, tmp_path / "w3", crop=80))
    narrow = tmp_path / "narrow"
    write_custom(narrow, count=1, size=(64, 64), classes=("background", "square"))
    with pytest.raises(DatasetError, match=r"img0.png holds the label value 2"):
        Trainer(settings(narrow, tmp_path / "w4", iters=1, batch_size=1))  # before any model
    assert not (tmp_path / "w4" / STATE_FILE).exists()
    code = main(["train", "--config", TINY, "--data-root", str(empty), "--dataset", "custom",
                 "--work-dir", str(tmp_path / "w5")])
    assert code == 2


def test_relative_position_tables_resize_on_the_offset_grid():
    heads, side = 2, 7  # a 4x4 window
    grid = torch.arange(side * side, dtype=torch.float32).reshape(side, side)
    table = torch.cat([torch.stack([grid.flatten(), -grid.flatten()], 1),
                       torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])])
    out = resize_relative_position_table(table, 8)
    assert out.shape == (15 * 15 + 3, heads)
    assert torch.equal(out[-3:], table[-3:])
    assert torch.equal(resize_relative_position_table(table, 4), table)
    # Bicubic on a linear ramp keeps it linear inside: the centre offset stays the centre.
    assert out[7 * 15 + 7, 0] == pytest.approx(grid[3, 3].item(), abs=1e-4)


def test_upernet_loss_is_mmseg_pixel_cross_entropy(upernet_models):
    from vitadapter.training.criterion import criterion_for, pixel_cross_entropy

    model = upernet_models["tiny-vit-adapter-upernet"]
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, model.num_classes, (2, 128, 128),
                           generator=torch.Generator().manual_seed(1))
    labels[:, :32] = 255
    model.eval()  # no dropout: the loss is a function of the weights
    losses = criterion_for(model, draw=None)(model, images, labels)  # type: ignore[arg-type]
    assert set(losses) == {"decode.loss_ce", "aux.loss_ce"}
    with torch.no_grad():
        features = model.backbone(images)
        logits = torch.nn.functional.interpolate(model.decode_head(features).logits,
                                                 size=(128, 128), mode="bilinear")
        aux = torch.nn.functional.interpolate(model.auxiliary_head(features), size=(128, 128),
                                              mode="bilinear")
    valid = labels != 255
    # mmseg 0.x averages over every pixel, ignored ones counting zero.
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[valid],
                                                 labels[valid], reduction="sum") / labels.numel()
    torch.testing.assert_close(losses["decode.loss_ce"].detach(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["aux.loss_ce"].detach(),
                               0.4 * pixel_cross_entropy(aux, labels), rtol=1e-6, atol=0)


def test_upernet_trains(data_root, tmp_path):
    run = settings(data_root, tmp_path, model=str(REFERENCE / "tiny-vit-adapter-upernet"
                                                  / "config.json"),
                   init=str(REFERENCE / "tiny-vit-adapter-upernet" / "checkpoint.pth"),
                   iters=4, crop=64, drop_path=0.0)
    Trainer(run).run()
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and {"decode.loss_ce", "aux.loss_ce"} <= set(records[0])
    assert losses[-1] < losses[0], losses
    seg = Segmenter(config=tmp_path / "config.json", checkpoint=tmp_path / LATEST)
    assert seg.config.head.kind == "upernet" and seg.config.num_classes == 3

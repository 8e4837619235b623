"""``vitadapter train`` on the tiny model: it learns, resumes exactly, refuses bad input."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from vitadapter import Segmenter
from vitadapter.cli import main
from vitadapter.config.presets import get_preset
from vitadapter.errors import CheckpointError, ConfigError, DatasetError, TrainingError
from vitadapter.training.init import resize_relative_position_table
from vitadapter.training.trainer import Trainer, TrainSettings, loss_summary, training_config
from vitadapter.training.work_dir import CHECKPOINTS, LATEST, LOG_FILE

from .conftest import CHECKPOINT, REFERENCE
from .test_training_data import write_custom

TINY = str(REFERENCE / "tiny-upstream" / "config.json")
UPERNET = str(REFERENCE / "tiny-vit-adapter-upernet" / "config.json")


def settings(data_root: Path, work_dir: Path, **changes) -> TrainSettings:
    """The tiny model at a 64px crop (its 128px tables resized by --init), few points."""
    base = TrainSettings(data_root, "custom", work_dir, model=TINY, init=str(CHECKPOINT),
                         iters=8, batch_size=2, crop=64, img_scale=(64, 64), lr=1e-3,
                         warmup_iters=0, num_points=64, eval_interval=0, log_interval=1,
                         save_interval=100, num_workers=0, progress=False)
    return replace(base, **changes)


def test_short_run_learns_the_shapes(data_root, tmp_path, capsys, monkeypatch):
    plotted = []  # curves.png follows every evaluation and save
    monkeypatch.setattr("vitadapter.training.curves.plot_curves",
                        lambda records, out: plotted.append([r["iter"] for r in records]))
    with Trainer(settings(data_root, tmp_path, eval_interval=8, drop_path=0.0,
                          progress=True)) as trainer:
        before = trainer.evaluate()
        trainer.run()
    assert plotted == [[0], [0, *range(1, 9), 8], [0, *range(1, 9), 8]]
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    after = [r["mIoU"] for r in records if r.get("mode") == "val"][-1]
    assert len(losses) == 8 and {"lr", "s_per_iter", "decode.d0.loss_cls"} <= set(records[1])
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses
    assert before is not None and after > before + 5, (before, after)  # percent, as printed
    bars = capsys.readouterr().err
    assert "train: 100%" in bars and "8/8" in bars and "evaluate: 100%" in bars
    # The work dir serves inference as it is.
    seg = Segmenter(config=tmp_path / "config.json", checkpoint=tmp_path / LATEST)
    assert seg.class_names == ("background", "square", "disc")
    assert seg.segment(data_root / "images" / "val" / "img0.png").label_map.shape == (64, 64)
    assert (tmp_path / "best.safetensors").exists()


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
    assert not (tmp_path / "w4" / CHECKPOINTS).exists()
    code = main(["train", "--config", TINY, "--data-root", str(empty), "--dataset", "custom",
                 "--work-dir", str(tmp_path / "w5")])
    assert code == 2
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingError, match=r"--work-dir .*file is a file; give a directory"):
        Trainer(settings(data_root, tmp_path / "file"))
    with pytest.raises(TrainingError, match=r"cannot create --work-dir .*file/run: Not a dir"):
        Trainer(settings(data_root, tmp_path / "file" / "run"))
    with pytest.raises(TrainingError, match=r"--batch-size 1 in one process: UperNet's pyramid "
                                            "pooling normalises a 1x1 map over the batch"):
        Trainer(settings(data_root, tmp_path / "w6", batch_size=1, model=UPERNET))


def test_the_console_shows_the_model_s_own_loss_terms():
    m2f = {"decode.loss_cls": 1.0, "decode.loss_mask": 2.0, "decode.loss_dice": 0.5,
           "decode.d0.loss_cls": 0.25, "decode.d0.loss_mask": 0.5, "decode.d0.loss_dice": 0.125}
    assert loss_summary(m2f) == "cls 1.250 mask 2.500 dice 0.625"
    assert loss_summary({"decode.loss_ce": 0.75, "aux.loss_ce": 0.3}) == "ce 0.750 aux.ce 0.300"


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


@pytest.mark.parametrize("content", [{}, {"state_dict": {}}])
def test_init_from_an_empty_checkpoint_is_refused(data_root, tmp_path, content):
    empty = tmp_path / "empty.pth"
    torch.save(content, empty)
    with pytest.raises(CheckpointError, match=r"--init .*empty.pth holds no tensors"):
        Trainer(settings(data_root, tmp_path / "work", init=str(empty)))
    assert not (tmp_path / "work").exists()  # the work dir it created is gone again


def test_init_with_a_sliver_of_the_backbone_is_refused(data_root, tmp_path):
    sliver = tmp_path / "sliver.pth"
    full = torch.load(CHECKPOINT, weights_only=True)["state_dict"]
    torch.save({"cls_token": full["backbone.cls_token"],
                "patch_embed.proj.weight": full["backbone.patch_embed.proj.weight"]}, sliver)
    with pytest.raises(CheckpointError, match=r"fills only 2 of the model's tensors \(cls_token, "
                                              r"patch_embed.proj.weight\) and misses \d+ of the "
                                              r"ViT blocks' \(backbone.blocks.0"):
        Trainer(settings(data_root, tmp_path / "work", init=str(sliver)))


def test_a_run_shorter_than_the_warm_up_is_warned_about(data_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING), \
            Trainer(settings(data_root, tmp_path, iters=100, warmup_iters=1500, lr=2e-5)):
        pass
    assert ("--iters 100 ends inside the 1500 warm-up iterations: the lr never reaches --lr "
            "2e-05 (it peaks at 3.33e-07); pass --warmup-iters 10") in caplog.text


def test_the_slide_stride_scales_from_the_inference_crop():
    """A plain ViT's img_size is its pretraining grid (224), not the crop (512)."""
    deit = get_preset("ade20k-deit-adapter-t-upernet-512")
    assert deit.backbone.img_size == 224 and deit.inference.stride == (341, 341)
    for crop, stride in ((None, 341), (64, 43), (256, 170), (512, 341)):
        run = TrainSettings(Path("data"), "custom", Path("work"), crop=crop,
                            img_scale=(2048, 512))
        config = training_config(deit, run, 3, "custom", drop_path=0.3)
        assert config.inference.crop_size == (crop or 512,) * 2
        assert config.inference.stride == (stride, stride)
        assert config.backbone.img_size == 224


def test_train_help_and_quiet_come_from_the_settings(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("--lr LR base learning rate (default: the model's recipe, 2e-05 official, 0.0001 "
            "DINOv3)") in text
    assert "--keep-checkpoints KEEP_CHECKPOINTS complete checkpoints kept" in text
    assert "(default: the model's inference crop)" in text
    seen = []

    def train(settings):
        seen.append(settings)
        return SimpleNamespace(rank=0, iteration=7)

    monkeypatch.setattr("vitadapter.training.trainer.train", train)
    main(["-q", "train", "--data-root", "d", "--dataset", "custom", "--work-dir", str(tmp_path),
          "--lr", "0.5", "--iters", "7"])
    assert seen[0].progress is False and seen[0].lr == 0.5 and seen[0].iters == 7
    assert seen[0].warmup_iters == TrainSettings.warmup_iters

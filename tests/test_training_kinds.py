"""Every backbone kind x head kind trains, generated from the config schema's kinds (as timm
tests every registered model): one step of the tiny reference models at a 64px crop gives
every trainable parameter a gradient, gradient checkpointing is on in every block and gives
the same gradients, and the fine-tuned work dir serves ``segment`` with windows covering the
image."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from vitadapter.cli import main
from vitadapter.config.schema import BACKBONE_KINDS, HEAD_KINDS, ModelConfig, UperNetConfig
from vitadapter.modeling.build import build_model, resolve_config
from vitadapter.pipeline.windows import sliding_windows
from vitadapter.training.trainer import Trainer
from vitadapter.training.work_dir import CONFIG_FILE, LATEST, LOG_FILE

from .conftest import REFERENCE, set_config
from .test_training_run import settings

# The tiny reference set whose backbone, and whose head, stands for each kind.
BACKBONE_SETS = {"beit": "tiny-upstream", "vit": "tiny-vit-adapter-upernet",
                 "dinov3": "tiny-dinov3-adapter-m2f"}
HEAD_SETS = {"mask2former": "tiny-upstream", "upernet": "tiny-beit-adapter-upernet"}
KINDS = list(itertools.product(BACKBONE_KINDS, HEAD_KINDS))
# A DINOv3 ViT trains frozen (its recipe): its weights come from Meta's backbone file.
BACKBONE_FILES = {"dinov3": str(REFERENCE / "tiny-dinov3-adapter-m2f" / "backbone.pth")}


def composed(backbone_kind: str, head_kind: str) -> ModelConfig:
    """The backbone (and test pipeline) of one set with the head of another, its input
    widths fitted to the backbone."""
    base = resolve_config(set_config(BACKBONE_SETS[backbone_kind]))
    other = resolve_config(set_config(HEAD_SETS[head_kind]))
    head = other.head
    if head_kind == "upernet" and base.inference.pipeline == "dinov3":
        base = base.replace(inference=other.inference)  # Meta's pipeline is Mask2Former's
    width = base.backbone.embed_dim
    head = dataclasses.replace(head, in_channels=(width,) * 4)
    if isinstance(head, UperNetConfig) and head.auxiliary is not None:
        head = dataclasses.replace(head, auxiliary=dataclasses.replace(head.auxiliary,
                                                                       in_channels=width))
    return base.replace(head=head)


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory) -> dict[tuple[str, str, bool], Trainer]:
    """One training step of every kind, without and with gradient checkpointing (random
    initial weights, the same on both), resized images larger than the crop."""
    made = {}
    for (backbone, head), with_cp in itertools.product(KINDS, (False, True)):
        folder = tmp_path_factory.mktemp(f"{backbone}-{head}-{with_cp}")
        config = folder / "model.json"
        config.write_text(json.dumps(composed(backbone, head).to_dict()))
        run = settings(data_root, folder / "work", model=str(config), init=None, iters=1,
                       batch_size=2, img_scale=(96, 96), with_cp=with_cp,
                       backbone_checkpoint=BACKBONE_FILES.get(backbone))
        with Trainer(run) as trainer:
            trainer.run()
        made[backbone, head, with_cp] = trainer
    return made


@pytest.mark.parametrize(("backbone", "head"), KINDS)
def test_one_step_reaches_every_parameter_and_checkpointing_changes_nothing(
        runs, backbone, head):
    plain, checkpointed = runs[backbone, head, False], runs[backbone, head, True]
    model = checkpointed.model
    assert model.config.backbone.kind == backbone and model.config.head.kind == head
    image, labels = plain.dataset[0, 0]  # the crop asked for (a plain ViT's img_size is 224)
    assert image.shape == (3, 64, 64) and labels.shape == (64, 64)
    switched = [*model.backbone.blocks,
                *(part for block in model.backbone.interactions
                  for part in (block.injector, block.extractor, *(block.extra_extractors or ()))
                  if part is not None)]
    assert len(switched) > model.config.backbone.depth
    assert all(m.with_cp for m in switched) and not any(
        m.with_cp for m in plain.model.modules() if hasattr(m, "with_cp"))
    record = json.loads((plain.work_dir / LOG_FILE).read_text().splitlines()[0])
    terms = {k for k in record if ".loss_" in k}
    if head == "upernet":
        assert terms == {"decode.loss_ce", "aux.loss_ce"}
    else:  # deep supervision: the queries before the first decoder layer, then after each
        layers = ["", *(f".d{i}" for i in range(model.config.head.decoder.num_layers))]
        assert terms == {f"decode{layer}.loss_{kind}" for kind in ("cls", "mask", "dice")
                         for layer in layers}
    grads = {n: p.grad for n, p in plain.model.named_parameters() if p.requires_grad}
    assert [n for n, g in grads.items() if g is None] == []
    assert all(torch.isfinite(g).all() for g in grads.values())
    for name, param in model.named_parameters():
        if param.requires_grad:  # (not a frozen ViT's)
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-7,
                                       msg=name)


@pytest.mark.parametrize(("backbone", "head"), KINDS)
def test_the_fine_tuned_work_dir_segments_with_covering_windows(runs, backbone, head, data_root,
                                                                tmp_path):
    work = runs[backbone, head, False].work_dir
    config = json.loads((work / CONFIG_FILE).read_text())
    crop, stride = config["inference"]["crop_size"], config["inference"]["stride"]
    assert crop == [64, 64] and 0 < stride[0] <= 64 and stride[0] == stride[1]
    # The 64px photo is resized to 96px (img_scale 96): a grid of slide windows.
    windows = sliding_windows(96, 96, tuple(crop), tuple(stride))
    covered = np.zeros((96, 96), bool)
    for w in windows:
        covered[w.y1:w.y2, w.x1:w.x2] = True
    assert len(windows) > 1 and covered.all()
    photo = data_root / "images" / "val" / "img0.png"
    backbone = BACKBONE_FILES.get(backbone)  # a frozen ViT is not in the work dir
    assert main(["-q", "segment", str(photo), "--config", str(work / CONFIG_FILE),
                 "--checkpoint", str(work / LATEST), "--out", str(tmp_path),
                 *(["--backbone-checkpoint", backbone] if backbone else [])]) == 0
    report = json.loads((tmp_path / "img0.json").read_text())
    rows = report["classes"]
    assert rows and all(isinstance(r["score"], float) for r in rows), rows
    assert sum(r["pixels"] for r in rows) == 64 * 64


def test_a_checkpointed_step_after_an_inference_mode_evaluation():
    """The evaluation during training caches constants (reference points) in inference mode;
    the next checkpointed step saves them for backward."""
    model = build_model(set_config("tiny-upstream"))
    assert model.set_grad_checkpointing() > model.config.backbone.depth
    crop = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(crop)
    model.train()
    sum(f.sum() for f in model.backbone(crop)).backward()
    assert model.backbone.interactions[0].injector.gamma.grad is not None


def test_resuming_says_only_that_it_resumed(runs, caplog):
    """No loading notices (an UperNet checkpoint's auxiliary head) on resume."""
    run = runs["beit", "upernet", False]
    with caplog.at_level(logging.INFO), \
            Trainer(dataclasses.replace(run.settings, resume=True)) as resumed:
        assert resumed.iteration == 1
    assert caplog.messages == [f"resumed {run.work_dir} at iteration 1 (iter_0000001)"]

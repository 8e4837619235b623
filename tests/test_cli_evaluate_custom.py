"""``vitadapter evaluate --dataset custom``: a fine-tuned model (its own class count and names)
measured on the val split of the data it was trained on, EXIF-rotated JPEGs read as stored."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitadapter import Segmenter, build_model, resolve_config
from vitadapter.cli import main
from vitadapter.evaluation import Areas, compute_metrics, intersect_and_union, percent
from vitadapter.pipeline.images import load_image
from vitadapter.weights.safetensors import save_safetensors

from .conftest import PHOTO, set_config
from .test_dataset_files import exif_rotated

CLASSES = ["background", "road", "tree"]


@dataclass(frozen=True)
class FineTuned:
    config: Path
    weights: Path
    data: Path
    areas: Areas  # computed directly from the model's label maps of the stored pixels


def write_work_dir(work: Path, classes: list[str]) -> tuple[Path, Path]:
    """A work dir as ``train`` leaves it: config.json with the classes, weights whose
    metadata names them (random weights of the tiny model with ``len(classes)`` classes)."""
    cfg = resolve_config(set_config("tiny-upstream")).with_num_classes(len(classes)).replace(
        name="mine", dataset="custom")
    palette = [[0, 0, 0], [128, 64, 128], [0, 128, 0], [70, 130, 180]][:len(classes)]
    work.mkdir(parents=True)
    config = work / "config.json"
    config.write_text(json.dumps({**cfg.to_dict(), "classes": classes, "palette": palette}))
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")
    weights = work / "latest.safetensors"
    save_safetensors(model.state_dict(), weights,
                     {"format": "vitadapter", "classes": json.dumps(classes),
                      "palette": json.dumps(palette)})
    return config, weights


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory) -> FineTuned:
    root = tmp_path_factory.mktemp("custom")
    config, weights = write_work_dir(root / "work", CLASSES)
    data = root / "data"
    for folder in ("images/val", "annotations/val"):
        (data / folder).mkdir(parents=True)
    (data / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    exif_rotated(data / "images/val/turned.JPG", np.ascontiguousarray(photo[:48, :64]))
    Image.fromarray(np.ascontiguousarray(photo[100:156, 100:156])).save(
        data / "images/val/plain.png")
    segmenter = Segmenter(config=config, checkpoint=weights, device="cpu")
    rng = np.random.default_rng(3)
    areas = Areas.zeros(3)
    for image in sorted((data / "images/val").iterdir()):
        pred = segmenter(load_image(image, exif=False)).label_map
        label = pred.astype(np.uint8)
        noise = rng.random(label.shape) < 0.3
        label[noise] = rng.integers(0, 3, int(noise.sum()))
        label[:4] = 255
        Image.fromarray(label).save(data / "annotations/val" / f"{image.stem}.png")
        areas = areas + intersect_and_union(pred, label, 3)
    return FineTuned(config, weights, data, areas)


def evaluate(fine: FineTuned, *extra: str) -> int:
    return main(["-q", "evaluate", "--data-root", str(fine.data), "--dataset", "custom",
                 "--device", "cpu", *extra])


def test_a_fine_tuned_model_is_evaluated_on_its_custom_val_split(fine_tuned, tmp_path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert evaluate(fine_tuned, "--config", str(fine_tuned.config), "--checkpoint",
                        str(fine_tuned.weights), "--out", str(tmp_path)) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    metrics = compute_metrics(fine_tuned.areas)
    assert (report["aAcc"], report["mIoU"], report["mAcc"]) == (
        percent(metrics.all_acc), percent(metrics.miou), percent(metrics.macc))
    assert [(r["id"], r["name"]) for r in report["per_class"]] == list(enumerate(CLASSES))
    assert [r["intersect"] for r in report["per_class"]] == fine_tuned.areas.intersect.tolist()
    assert (report["dataset"], report["split"], report["images"]) == ("custom", "val", 2)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in printed.getvalue().splitlines()]
    assert [row[0] for row in rows if len(row) == 3][:4] == ["Class", *CLASSES]


def test_custom_needs_the_model_trained_on_it(fine_tuned, tmp_path, capsys):
    assert evaluate(fine_tuned) == 2
    assert ("--dataset custom has no preset: pass the model trained on it, e.g. --config "
            "WORK_DIR/config.json" in capsys.readouterr().err)
    config, weights = write_work_dir(tmp_path / "four", [*CLASSES, "sky"])
    assert evaluate(fine_tuned, "--config", str(config), "--checkpoint", str(weights)) == 2
    assert ("the model mine predicts 4 classes but custom has 3: pass the config.json and "
            "weights of a model trained on its classes.json") in capsys.readouterr().err

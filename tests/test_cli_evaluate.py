"""``vitadapter evaluate`` end to end on a small COCO-Stuff dataset written by the tests, labelled
from the tiny reference model's own predictions (perturbed), in both on-disk layouts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitadapter import Segmenter
from vitadapter.cli import main
from vitadapter.data.datasets import COCO_STUFF_RAW_IDS
from vitadapter.errors import DatasetError
from vitadapter.evaluation import (
    Areas,
    compute_metrics,
    intersect_and_union,
    open_dataset,
    percent,
    run_evaluation,
)

from .conftest import CHECKPOINT, PHOTO, set_config

MODEL = ["--config", str(set_config("tiny-upstream")), "--checkpoint", str(CHECKPOINT),
         "--device", "cpu"]
RUN_DEPENDENT = ("seconds", "processes")  # metrics.json fields that differ between runs


def pictures() -> dict[str, np.ndarray]:
    """Square pictures: each is a single slide window for the tiny model (fast)."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    rng = np.random.default_rng(7)
    return {
        "000000000139": np.ascontiguousarray(photo[20:120, 60:160]),
        "000000000285": np.asarray(Image.fromarray(photo).resize((56, 56), Image.BILINEAR)),
        "000000000632": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
        "000000000724": np.ascontiguousarray(photo[::-3, ::4][:64, :64]),
    }


def perturbed(pred: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A label map close to ``pred``: some pixels of classes the model never predicts here
    (label-only classes), an ignored band, and one predicted class relabelled (so that it is
    prediction-only)."""
    label = pred.astype(np.uint8)
    noise = rng.random(label.shape) < 0.15
    label[noise] = rng.choice([0, 5, 100, 170], size=int(noise.sum()))
    label[: label.shape[0] // 5] = 255
    classes, counts = np.unique(pred, return_counts=True)
    label[pred == classes[np.argmin(counts)]] = 60
    return label


@dataclass(frozen=True)
class Written:
    root: Path
    predictions: dict[str, np.ndarray]  # the model's label map of each image, by stem
    areas: Areas  # computed directly with the metric function from those label maps


@pytest.fixture(scope="module")
def written(tmp_path_factory, segmenter: Segmenter) -> Written:
    """images/val2017/*.jpg with annotations/val2017/*_labelTrainIds.png and the same labels
    as raw COCO-Stuff ids in stuffthingmaps_trainval2017/val2017/*.png."""
    root = tmp_path_factory.mktemp("coco_stuff164k")
    rng = np.random.default_rng(11)
    for folder in ("images/val2017", "annotations/val2017", "stuffthingmaps_trainval2017/val2017"):
        (root / folder).mkdir(parents=True)
    predictions = {}
    areas = Areas.zeros(171)
    for stem, picture in pictures().items():
        image = root / "images/val2017" / f"{stem}.jpg"
        Image.fromarray(picture).save(image, quality=90)
        predictions[stem] = pred = segmenter(image).label_map
        label = perturbed(pred, rng)
        areas = areas + intersect_and_union(pred, label, 171)
        Image.fromarray(label).save(root / "annotations/val2017" / f"{stem}_labelTrainIds.png")
        raw = np.where(label == 255, 255, np.asarray(COCO_STUFF_RAW_IDS)[np.minimum(label, 170)])
        Image.fromarray(raw.astype(np.uint8)).save(
            root / "stuffthingmaps_trainval2017/val2017" / f"{stem}.png")
    return Written(root, predictions, areas)


@pytest.fixture(scope="module")
def dataset_root(written) -> Path:
    return written.root


def evaluate(root: Path, out: Path, *extra: str, dataset: str = "coco-stuff164k") -> int:
    return main(["-q", "evaluate", "--data-root", str(root), "--dataset", dataset, *MODEL,
                 "--out", str(out), *extra])


def load_metrics(out: Path) -> dict:
    report = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in report.items() if k not in RUN_DEPENDENT}


@pytest.fixture(scope="module")
def full_run(dataset_root, tmp_path_factory) -> Path:
    """One uninterrupted single-process evaluation (predictions saved, stdout kept)."""
    out = tmp_path_factory.mktemp("full")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert evaluate(dataset_root, out, "--save-predictions") == 0
    (out / "stdout.txt").write_text(printed.getvalue())
    return out


def test_metrics_json_equals_direct_computation(full_run, written):
    expected = written.areas
    report = json.loads((full_run / "metrics.json").read_text())
    metrics = compute_metrics(expected)
    assert (report["aAcc"], report["mIoU"], report["mAcc"]) == (
        percent(metrics.all_acc), percent(metrics.miou), percent(metrics.macc))
    assert report["unrounded"]["mIoU"] == metrics.miou * 100
    rows = report["per_class"]
    assert [r["id"] for r in rows] == list(range(171))
    assert rows[60]["name"] == "dining table"
    assert [r["IoU"] for r in rows] == [percent(v) for v in metrics.iou]
    assert [r["Acc"] for r in rows] == [percent(v) for v in metrics.acc]
    assert [r["intersect"] for r in rows] == expected.intersect.tolist()
    assert [r["union"] for r in rows] == expected.union.tolist()
    # the perturbation makes every kind of class appear: absent (null), label-only,
    # prediction-only
    assert rows[1]["IoU"] is None and rows[1]["Acc"] is None
    assert rows[100]["IoU"] == 0.0 and rows[100]["Acc"] == 0.0
    assert any(r["Acc"] is None and r["IoU"] == 0.0 for r in rows)
    assert 0 < report["mIoU"] < 100
    assert report["images"] == report["images_in_split"] == 4
    assert (report["dataset"], report["split"], report["model"]) == (
        "coco-stuff164k", "val2017", "tiny-upstream")
    assert "NaN" not in (full_run / "metrics.json").read_text()
    csv_lines = (full_run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "id,name,IoU,Acc,intersect,union,pred_area,label_area"
    assert csv_lines[2].startswith("1,bicycle,,,0,0,0,0")
    assert len(csv_lines) == 172


def test_saved_predictions_are_the_label_maps(full_run, written):
    for stem, pred in written.predictions.items():
        saved = np.asarray(Image.open(full_run / "predictions" / f"{stem}.png"))
        assert np.array_equal(saved, pred)


def test_raw_layout_gives_the_same_numbers(full_run, dataset_root, tmp_path):
    assert evaluate(dataset_root, tmp_path, dataset="coco-stuff164k-raw") == 0
    raw, converted = load_metrics(tmp_path), load_metrics(full_run)
    assert raw.pop("dataset") == "coco-stuff164k-raw"
    converted.pop("dataset")
    assert raw == converted


def test_prints_per_class_table_and_summary(full_run):
    printed = (full_run / "stdout.txt").read_text()
    assert printed.startswith("per class results:\n+")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in printed.splitlines()]
    classes = [row[0] for row in cells if len(row) == 3]
    assert classes[:3] == ["Class", "person", "bicycle"]
    assert classes[-3:-1] == ["wood", "aAcc"] and len(classes) == 1 + 171 + 2
    report = json.loads((full_run / "metrics.json").read_text())
    assert cells[-2] == [f"{report[k]:.2f}" for k in ("aAcc", "mIoU", "mAcc")]


def test_limit_then_crash_then_resume_equals_uninterrupted(full_run, dataset_root, tmp_path,
                                                           monkeypatch):
    import vitadapter.cli.evaluate as cli_evaluate

    original = cli_evaluate.label_maps
    calls: list[str] = []
    crash_at = [0]

    def watched(segmenter, paths):
        for path, label_map in zip(paths, original(segmenter, paths), strict=True):
            calls.append(Path(path).name)
            if len(calls) == crash_at[0]:
                raise RuntimeError("simulated crash")
            yield label_map

    monkeypatch.setattr(cli_evaluate, "label_maps", watched)
    records = tmp_path / "partial" / "rank-0.jsonl"
    assert evaluate(dataset_root, tmp_path, "--limit", "1") == 0
    assert load_metrics(tmp_path)["images"] == 1
    # resume all, crash on the second image of this run: the first one stays recorded
    calls.clear()
    crash_at[0] = 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(dataset_root, tmp_path, "--resume")
    assert calls == ["000000000285.jpg", "000000000632.jpg"]
    assert len(records.read_text().splitlines()) == 1 + 2  # settings + two finished images
    with records.open("a") as file:  # a record torn by the crash
        file.write('{"image":"000000000632","classes":[4')
    calls.clear()
    crash_at[0] = 0
    assert evaluate(dataset_root, tmp_path, "--resume") == 0
    assert calls == ["000000000632.jpg", "000000000724.jpg"]  # only what was not recorded
    assert load_metrics(tmp_path) == load_metrics(full_run)
    assert len(records.read_text().splitlines()) == 1 + 4  # each image once, tear repaired


def test_resume_refuses_other_settings(full_run, dataset_root, tmp_path, capsys):
    shutil.copytree(full_run / "partial", tmp_path / "partial")
    assert evaluate(dataset_root, tmp_path, "--resume", "--tta") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "tta: saved False, now True" in err
    assert evaluate(dataset_root, tmp_path, "--resume", dataset="coco-stuff164k-raw") == 2
    assert "dataset: saved 'coco-stuff164k', now 'coco-stuff164k-raw'" in capsys.readouterr().err
    assert evaluate(dataset_root, tmp_path) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_model_and_dataset_must_agree(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    (tmp_path / "images/validation").mkdir(parents=True)
    (tmp_path / "annotations/validation").mkdir(parents=True)
    (tmp_path / "x.jpg").rename(tmp_path / "images/validation/x.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "annotations/validation/x.png")
    assert evaluate(tmp_path, tmp_path / "out", dataset="ade20k") == 2
    assert "predicts 171 classes but ade20k has 150" in capsys.readouterr().err


def test_perfect_predictions_score_100(dataset_root):
    data = open_dataset(dataset_root, "coco-stuff164k-raw")
    labels = {sample.image: data.read_label(sample) for sample in data.samples}
    result = run_evaluation(lambda path: np.where(labels[path] == 255, 0, labels[path]),
                            data, settings={}, progress=False)
    assert (result.images, result.new_images) == (4, 4)
    # pixels labelled 255 are predicted as class 0 and not counted: everything else is right
    assert result.metrics.all_acc == 1.0 and result.metrics.miou == 1.0
    assert np.nansum(result.metrics.iou) == len(np.flatnonzero(result.areas.label))


def test_prediction_and_annotation_sizes_must_match(dataset_root, tmp_path):
    data = open_dataset(dataset_root, "coco-stuff164k")
    with pytest.raises(DatasetError, match=r"000000000139.jpg is 99x100 but its annotation .*"
                                           r"000000000139_labelTrainIds.png is 100x100"):
        run_evaluation(lambda path: np.zeros((100, 99), np.int64), data, settings={},
                       progress=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_equal_one(full_run, dataset_root, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "vitadapter", "-q", "evaluate", "--data-root", str(dataset_root),
               "--dataset", "coco-stuff164k", *MODEL, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
    assert load_metrics(out) == load_metrics(full_run)
    shares = [len((out / "partial" / f"rank-{r}.jsonl").read_text().splitlines()) - 1
              for r in (0, 1)]
    assert shares == [2, 2]
    assert done.stdout.count("Summary:") == 1  # only rank 0 prints
    # one process resuming the two processes' records has nothing left and the same result
    assert evaluate(dataset_root, out, "--resume") == 0
    assert load_metrics(out) == load_metrics(full_run)


def test_resume_checks_precision_and_checkpoint_content(full_run, dataset_root, tmp_path,
                                                        capsys):
    import hashlib

    import torch

    report = json.loads((full_run / "metrics.json").read_text())
    assert report["precision"] == "fp32" and report["device_kind"] == "cpu"
    assert report["checkpoint_sha256"] == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    shutil.copytree(full_run / "partial", tmp_path / "partial")
    moved = tmp_path / "moved.pth"
    shutil.copy(CHECKPOINT, moved)
    other = [arg if arg != str(CHECKPOINT) else str(moved) for arg in MODEL]

    def resume(*extra: str) -> int:
        return main(["-q", "evaluate", "--data-root", str(dataset_root), "--dataset",
                     "coco-stuff164k", *other, "--out", str(tmp_path), "--resume", *extra])

    assert resume() == 0  # the same weights under another name: nothing to evaluate again
    assert json.loads((tmp_path / "metrics.json").read_text())["mIoU"] == report["mIoU"]
    capsys.readouterr()
    assert resume("--precision", "int8") == 2
    assert "precision: saved 'fp32', now 'int8'" in capsys.readouterr().err
    state = torch.load(moved, weights_only=True)
    weights = state.get("state_dict", state)
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key] + 1
    torch.save(state, moved)
    assert resume() == 2
    assert "checkpoint_sha256: saved '" in capsys.readouterr().err


KILLED_EVALUATION = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.quick_runner import quick_segmenter
import vitadapter.cli.evaluate
from vitadapter.cli import main
from vitadapter.evaluation.records import RecordLog

vitadapter.cli.evaluate.segmenter_from_args = quick_segmenter
real_write, lines = RecordLog._write, []

def write(self, entry):
    lines.append(entry)
    if len(lines) == 3:  # the settings, one image, then half of the next image's record
        import json
        text = json.dumps(entry)
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        print("TORN", flush=True)
        time.sleep(600)
    real_write(self, entry)

RecordLog._write = write
sys.exit(main(sys.argv[2:]))
"""


def test_resume_after_a_real_kill_mid_record(dataset_root, tmp_path, monkeypatch):
    from .helpers import kill_when_torn
    from .quick_runner import quick_segmenter

    args = ["-q", "evaluate", "--data-root", str(dataset_root), "--dataset", "coco-stuff164k",
            "--device", "cpu"]
    assert kill_when_torn(KILLED_EVALUATION, *args, "--out", str(tmp_path / "killed")) == -9
    records = (tmp_path / "killed" / "partial" / "rank-0.jsonl").read_text()
    assert records.count("\n") == 2 and not records.endswith("\n")
    monkeypatch.setattr("vitadapter.cli.evaluate.segmenter_from_args", quick_segmenter)
    assert main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    killed, whole = (load_metrics(tmp_path / name) for name in ("killed", "whole"))
    assert killed["images"] == 4 and killed == whole

"""The training work dir: atomic checkpoints (a kill or a full disk mid-save), exact resume,
one run at a time, the dataset's identity, and edited or damaged files refused by name."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("scipy")

from vitadapter.errors import TrainingError
from vitadapter.training import work_dir as wd
from vitadapter.training.trainer import Trainer
from vitadapter.training.work_dir import (
    CHECKPOINTS,
    LATEST,
    LOG_FILE,
    POINTER,
    STATE_FILE,
    WEIGHTS,
    WorkDir,
)
from vitadapter.weights.safetensors import load_safetensors

from .conftest import CHECKPOINT
from .helpers import kill_when_torn
from .test_training_run import settings

STRAIGHT = {"iters": 2, "batch_size": 1, "save_interval": 1}


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def losses(work: Path) -> list[tuple[int, float]]:
    return [(r["iter"], r["loss"]) for r in map(json.loads, (work / LOG_FILE).open())]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Two uninterrupted iterations, a checkpoint after each: the work dir and the weights."""
    work = tmp_path_factory.mktemp("straight")
    with Trainer(settings(data_root, work, **STRAIGHT)) as trainer:
        trainer.run()
        return work, weights(trainer)


def copy_of(straight, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(straight[0], work)
    return work


def test_a_checkpoint_is_a_folder_and_the_work_dir_serves_segment(straight):
    work, _ = straight
    saved = sorted(p.name for p in (work / CHECKPOINTS).iterdir())
    assert saved == ["iter_0000001", "iter_0000002"]  # keep_checkpoints 2
    for name in saved:
        assert sorted(p.name for p in (work / CHECKPOINTS / name).iterdir()) == [
            STATE_FILE, WEIGHTS]
    assert (work / POINTER).read_text() == "iter_0000002\n"
    newest = work / CHECKPOINTS / "iter_0000002" / WEIGHTS
    assert (work / LATEST).read_bytes() == newest.read_bytes()
    state = torch.load(newest.parent / STATE_FILE, weights_only=True)
    assert state["iteration"] == 2 and state["iters"] == 2
    assert state["dataset"]["images"] == 4 and len(state["dataset"]["files_sha256"]) == 64
    assert not list(work.glob(".*.tmp")) and not (work / ".train.lock.json").exists()


def test_ctrl_c_finishes_the_iteration_then_saves_it(straight, data_root,
                                                     tmp_path, monkeypatch):
    work = tmp_path / "work"
    first = Trainer(settings(data_root, work, **{**STRAIGHT, "save_interval": 100}))
    step = first.step

    def interrupted_step(images, labels):
        if first.iteration == 0:  # Ctrl-C in the middle of the first iteration
            os.kill(os.getpid(), signal.SIGINT)
        return step(images, labels)

    monkeypatch.setattr(first, "step", interrupted_step)
    with first, pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.iteration == 1
    # The checkpoint equals the straight run's of iteration 1: the same weights and RNG state.
    ours, theirs = work / CHECKPOINTS / "iter_0000001", straight[0] / CHECKPOINTS / "iter_0000001"
    assert [p.name for p in (work / CHECKPOINTS).iterdir()] == [ours.name]
    assert (ours / WEIGHTS).read_bytes() == (theirs / WEIGHTS).read_bytes()
    state, reference = (torch.load(c / STATE_FILE, weights_only=True) for c in (ours, theirs))
    assert torch.equal(state["torch_rng"][0], reference["torch_rng"][0])
    assert state["iteration"] == 1 and losses(work) == losses(straight[0])[:1]


KILLED_IN_SAVE = """
import json, sys, time
from pathlib import Path
import torch
from vitadapter.training.trainer import Trainer, TrainSettings

real_save = torch.save

def torn(state, file):
    if state["iteration"] == 2:  # the weights are written, the state half
        file.write(b"PK\\x03\\x04")
        file.flush()
        print("TORN", flush=True)
        time.sleep(600)
    real_save(state, file)

torch.save = torn
fields = json.loads(sys.argv[2])
fields.update(data_root=Path(fields["data_root"]), work_dir=Path(fields["work_dir"]),
              img_scale=tuple(fields["img_scale"]))
fields.pop("RESUMABLE")
Trainer(TrainSettings(**fields)).run()
"""


def test_a_kill_between_the_files_of_a_save_resumes_from_the_last_complete_one(
        straight, data_root, tmp_path, caplog):
    work = tmp_path / "work"
    run = settings(data_root, work, **STRAIGHT)
    fields = json.dumps(dataclasses.asdict(run), default=str)
    assert kill_when_torn(KILLED_IN_SAVE, fields) == -signal.SIGKILL
    partial = [p.name for p in (work / CHECKPOINTS).iterdir() if p.name.startswith(".")]
    assert len(partial) == 1 and partial[0].startswith(".iter_0000002.")
    assert (work / POINTER).read_text() == "iter_0000001\n"
    with pytest.raises(TrainingError, match="already holds a training run"):
        Trainer(run)
    (work / POINTER).write_text("iter_0000000\n")  # as if killed before the pointer moved
    with caplog.at_level(logging.WARNING), \
            Trainer(dataclasses.replace(run, resume=True)) as resumed:
        assert resumed.iteration == 1
        resumed.run()
        assert_same_weights(weights(resumed), straight[1])
    assert f"removing {work / CHECKPOINTS / partial[0]}: a save that did not finish" in caplog.text
    assert ("last_checkpoint names iter_0000000, but iter_0000001 is complete and newer: "
            "resuming from it") in caplog.text
    assert sorted(p.name for p in (work / CHECKPOINTS).iterdir()) == [
        "iter_0000001", "iter_0000002"]
    assert losses(work) == losses(straight[0])


@pytest.mark.parametrize("big", ["weights", "state"])
def test_a_full_disk_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, big):
    work = WorkDir(tmp_path)
    small = {"w": torch.zeros(4)}
    work.save_checkpoint(1, small, {}, {"iteration": 1}, {}, keep=2)
    tensors = {"w": torch.zeros(1 << 16)} if big == "weights" else small
    state = {"iteration": 2, "optimizer": torch.zeros(1 << 16) if big == "state" else None}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(TrainingError) as error:
            work.save_checkpoint(2, tensors, {}, state, {}, keep=2)
        with pytest.raises(TrainingError, match=rf"disk full while writing "
                                                rf"{re.escape(str(tmp_path / LOG_FILE))}"):
            work.append_log({"iter": 2, "note": "x" * (1 << 17)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(error.value) == (
        f"disk full while writing {tmp_path / CHECKPOINTS / 'iter_0000002'} "
        f"({os.strerror(errno.EFBIG)}): the work dir keeps its last complete checkpoint, "
        "iter_0000001; free space (or raise the file-size limit) and --resume")
    assert [c.iteration for c in work.checkpoints()] == [1] and not work.partial_checkpoints()
    assert (tmp_path / POINTER).read_text() == "iter_0000001\n"


def test_one_run_at_a_time_and_a_fresh_run_sets_an_unfinished_one_aside(data_root,
                                                                        tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    holder = WorkDir(work)
    holder.lock()
    with pytest.raises(TrainingError, match=rf"{re.escape(str(work))} is in use by another "
                                            rf"training run \(pid "
                                            rf"{os.getpid()} on .+, started .+\): wait"):
        Trainer(settings(data_root, work, iters=1))
    holder.unlock()
    # An earlier run that died before its first save: a log and an evaluation's best weights.
    (work / LOG_FILE).write_text('{"iter": 1, "loss": 9.0}\n')
    (work / "best.safetensors").write_bytes(b"old")
    (work / CHECKPOINTS / ".iter_0000002.x.tmp").mkdir(parents=True)
    with Trainer(settings(data_root, work, iters=1, batch_size=1)) as trainer:
        trainer.run()
    assert (work / "unfinished-1" / LOG_FILE).read_text() == '{"iter": 1, "loss": 9.0}\n'
    assert (work / "unfinished-1" / "best.safetensors").read_bytes() == b"old"
    assert [r["iter"] for r in map(json.loads, (work / LOG_FILE).open())] == [1]
    assert [p.name for p in (work / CHECKPOINTS).iterdir()] == ["iter_0000001"]


def test_resume_with_other_settings_is_refused_and_keeps_the_work_dir(straight, data_root,
                                                                    tmp_path):
    work = copy_of(straight, tmp_path)
    files = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=r"other settings \(.*crop: 64 in the work dir, 96"):
        Trainer(settings(data_root, work, **STRAIGHT, crop=96, resume=True))
    with pytest.raises(TrainingError, match=r"already holds a training run \(saved up to "
                                            r"iteration 2\); pass --resume"):
        Trainer(settings(data_root, work, **STRAIGHT))
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == files


def test_resume_refuses_other_data_listing_the_differences(straight, data_root,
                                                          tmp_path):
    work = copy_of(straight, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    resume = settings(data, work, **STRAIGHT, resume=True)
    for folder in ("images", "annotations"):
        shutil.copy(data / folder / "train" / "img0.png", data / folder / "train" / "img9.png")
    with pytest.raises(TrainingError, match=r"training images: 4 in the work dir, 5 now"):
        Trainer(resume)
    for folder in ("images", "annotations"):
        os.replace(data / folder / "train" / "img9.png", data / folder / "train" / "img0.png")
        os.replace(data / folder / "train" / "img3.png", data / folder / "train" / "img7.png")
    with pytest.raises(TrainingError, match=r"the same count \(4\) but other file names"):
        Trainer(resume)
    for folder in ("images", "annotations"):
        os.replace(data / folder / "train" / "img7.png", data / folder / "train" / "img3.png")
    (data / "classes.json").write_text('{"classes": ["square", "background", "disc"]}')
    with pytest.raises(TrainingError, match=r"classes: \['background', 'square', 'disc'\] in "
                                            r"the work dir, \['square', 'background', 'disc'\]"):
        Trainer(resume)


def test_a_finished_run_can_be_extended_not_cut_below_what_it_did(straight, data_root,
                                                                 tmp_path, caplog):
    work = copy_of(straight, tmp_path)
    with pytest.raises(TrainingError, match="--iters 1 is less than the 2 iterations"):
        Trainer(settings(data_root, work, **{**STRAIGHT, "iters": 1}, resume=True))
    unchanged = dataclasses.replace(settings(data_root, work, **STRAIGHT, resume=True),
                                    iters=None)
    with Trainer(unchanged) as same:  # without --iters: the run's own
        assert same.iters == 2
    more = settings(data_root, work, **{**STRAIGHT, "iters": 3, "keep_checkpoints": 1},
                    resume=True)
    with caplog.at_level(logging.WARNING), Trainer(more) as trainer:
        trainer.run()
        assert trainer.iteration == 3
    assert "the poly schedule is recomputed for 3 (base lr at iteration 2: 0.000333" in caplog.text
    assert [i for i, _ in losses(work)] == [1, 2, 3]
    assert [p.name for p in (work / CHECKPOINTS).iterdir()] == ["iter_0000003"]  # keep 1


def rewrite_state(work: Path, **changes) -> Path:
    path = work / CHECKPOINTS / "iter_0000002" / STATE_FILE
    state = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value(state) if callable(value) else value
    torch.save(state, path)
    return path


def first_moment(state):
    optimizer = state["optimizer"]
    optimizer["state"][0]["exp_avg"] = optimizer["state"][0]["exp_avg"].flatten()[:3]
    return optimizer


@pytest.mark.parametrize(("edit", "message"), [
    ({"iteration": "2"}, r"'iteration' is a str\): the file was edited or damaged"),
    ({"iters": None}, r"\(no 'iters'\)"),
    ({"version": 2}, r"another version of the trainer \(state version 2, this one reads 3\)"),
    ({"torch_rng": lambda s: [s["torch_rng"][0].float()]}, r"'torch_rng' is not 1 byte tensor"),
    ({"dataset": {"images": 4}}, r"'dataset.files_sha256' is missing or a NoneType"),
    ({"optimizer": first_moment}, r"optimizer, RNG or scaler state does not fit this run "
                                  r"\(optimizer exp_avg of shape \(3,\) for a parameter"),
])
def test_an_edited_state_is_refused_by_name(straight, data_root, tmp_path, edit,
                                           message):
    work = copy_of(straight, tmp_path)
    path = rewrite_state(work, **edit)
    with pytest.raises(TrainingError, match=rf"{re.escape(str(path))}.*{message}"):
        Trainer(settings(data_root, work, **STRAIGHT, resume=True))


def test_damaged_files_are_refused_with_the_reason(straight, data_root, tmp_path):
    work = copy_of(straight, tmp_path)
    resume = settings(data_root, work, **STRAIGHT, resume=True)
    newest = work / CHECKPOINTS / "iter_0000002"
    weights_file = newest / WEIGHTS
    data = bytearray(weights_file.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = bytes(len(data) - header)  # zeroed tensors, header intact
    weights_file.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=rf"{re.escape(str(weights_file))} does not match "
                                            r"the SHA-256 its train_state.pt records: .* remove "
                                            rf"{re.escape(str(newest))} to resume from "
                                            "iter_0000001"):
        Trainer(resume)
    (newest / STATE_FILE).write_bytes(b"")
    with pytest.raises(TrainingError, match=r"is not a readable training state \(the file is "
                                            r"empty\)"):
        Trainer(resume)
    torch.save([1, 2], newest / STATE_FILE)
    with pytest.raises(TrainingError, match="holds a list, not a training state"):
        Trainer(resume)
    shutil.rmtree(newest)  # as the message says: resume from the one before
    with Trainer(resume) as trainer:
        assert trainer.iteration == 1
    assert (work / POINTER).read_text() == "iter_0000001\n"  # was iter_0000002: updated
    assert (work / LATEST).read_bytes() == (work / CHECKPOINTS / "iter_0000001" /
                                            WEIGHTS).read_bytes()


def test_an_edited_log_is_read_around_its_bad_lines(straight, data_root, tmp_path,
                                                   caplog):
    work = copy_of(straight, tmp_path)
    good = (work / LOG_FILE).read_bytes()
    with open(work / LOG_FILE, "ab") as log:
        log.write(b'\xff\xfe not utf-8\n[1, 2]\n{"iter": "9", "loss": 1}\n{"iter": 3, "loss": 1}\n')
    with caplog.at_level(logging.WARNING), \
            Trainer(settings(data_root, work, **STRAIGHT, resume=True)) as trainer:
        assert trainer.iteration == 2
    assert "left out 3 line(s) that are not JSON objects with an integer 'iter'" in caplog.text
    assert (work / LOG_FILE).read_bytes() == good  # iteration 3 was after the checkpoint
    assert wd.read_log(work / LOG_FILE)[-1]["iter"] == 2


def test_curves_are_drawn_from_the_readable_records_without_notices(tmp_path, caplog,
                                                                   monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))  # a first use: a font cache
    pytest.importorskip("matplotlib")
    from vitadapter.training.curves import plot_curves

    log = tmp_path / LOG_FILE
    log.write_bytes(b'{"iter": 1, "loss": 3.0}\n\xff\n{"iter": 2, "loss": 2.0}\n'
                    b'{"iter": 2, "mode": "val", "mIoU": 40.5}\n{"iter": "3", "loss": 1}\n')
    with caplog.at_level(logging.INFO):
        out = plot_curves(wd.read_log(log), tmp_path / "curves.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r.name for r in caplog.records] == ["vitadapter.training.work_dir"]  # 2 bad lines


def test_checkpoints_of_the_trained_tensors_only_resume_with_init(data_root, tmp_path,
                                                                 monkeypatch):
    """What checkpoint_tensors leaves out (a frozen backbone) comes from --init on resume."""
    whole = Trainer.checkpoint_tensors
    monkeypatch.setattr(Trainer, "checkpoint_tensors", lambda self: {
        k: v for k, v in whole(self).items() if not k.startswith("backbone.blocks.")})
    run = settings(data_root, tmp_path, iters=2, batch_size=1)
    with Trainer(dataclasses.replace(run, iters=1)) as first:
        first.run()
        trained = weights(first)
    tensors, _ = load_safetensors(tmp_path / CHECKPOINTS / "iter_0000001" / WEIGHTS)
    assert tensors and not [k for k in tensors if k.startswith("backbone.blocks.")]
    with pytest.raises(TrainingError, match=r"hold the trained tensors only: pass the "
                                             r"--backbone-checkpoint \(or --init\)"):
        Trainer(dataclasses.replace(run, init=None, resume=True))
    with Trainer(dataclasses.replace(run, resume=True)) as resumed:
        ours = weights(resumed)
    initial = torch.load(CHECKPOINT, weights_only=True)["state_dict"]
    for key, value in ours.items():
        if "relative_position" in key:  # tables resized to the crop, indices derived
            continue
        expected = initial[key] if key.startswith("backbone.blocks.") else trained[key]
        assert torch.equal(value, expected), key

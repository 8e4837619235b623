"""``vitadapter train`` over 2 gloo processes on CPU (tiny model, 64px crops, 2 iterations):
the ranks hold the same weights after every step, 2 processes x batch 1 train as 1 process x
batch 2, and a run interrupted after 1 iteration resumes under 2 processes to the same weights.
Augmentation is off (resize ratio 1: every image keeps all its classes) so that the class loss,
normalised per process as the official code does, has the same weights in both layouts."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("scipy")

from vitadapter.training.trainer import Trainer
from vitadapter.training.work_dir import CHECKPOINTS, LATEST, LOG_FILE, STATE_FILE

from .conftest import free_port
from .test_training_run import settings

COMMON = {"iters": 2, "drop_path": 0.0, "lr": 1e-4}


def trainer(root: Path, work: Path, **changes) -> Trainer:
    made = Trainer(settings(root, work, **{**COMMON, **changes}))
    made.dataset.pipeline = replace(made.pipeline, ratio_range=(1.0, 1.0))
    return made


def weights(made: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in made.model.state_dict().items()}


def worker(rank: int, port: int, root: Path, out: Path) -> None:
    """Two iterations, then the same run resumed from its checkpoint of iteration 1 (a copy
    of the work dir without the newer one: as if stopped after iteration 1)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    work, resumed = out / "work", out / "resumed"
    with trainer(root, work, batch_size=1) as made:
        for step in (1, 2):
            made.run(until=step)
            torch.save(weights(made), out / f"rank{rank}-step{step}.pt")
    if rank == 0:
        shutil.copytree(work, resumed)
        shutil.rmtree(resumed / CHECKPOINTS / "iter_0000002")
    dist.barrier()
    with trainer(root, resumed, batch_size=1, resume=True) as made:
        assert made.iteration == 1
        made.run()
        torch.save(weights(made), out / f"rank{rank}-resumed.pt")
    dist.destroy_process_group()


def two_processes(root: Path, out: Path) -> None:
    mp.start_processes(worker, args=(free_port(), root, out), nprocs=2, join=True,
                       start_method="spawn")


@pytest.fixture(scope="module")
def two_runs(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    two_processes(data_root, out)
    return out


def test_ranks_agree_and_equal_one_process_with_the_whole_batch(two_runs, data_root,
                                                                 tmp_path):
    for step in (1, 2):
        rank0 = torch.load(two_runs / f"rank0-step{step}.pt", weights_only=True)
        rank1 = torch.load(two_runs / f"rank1-step{step}.pt", weights_only=True)
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (step, key)
    single = trainer(data_root, tmp_path, batch_size=2)
    start = weights(single)
    single.run(until=1)
    # Adam turns float noise in a gradient that is exactly zero in exact arithmetic (biases
    # before a BatchNorm, the key bias of attention) into steps of size lr: leave those out.
    grads = {n: p.grad.abs() for n, p in single.model.named_parameters() if p.grad is not None}
    scale = max(g.max().item() for g in grads.values())
    live = {n: g > 1e-6 * scale for n, g in grads.items()}
    single.run()
    ours = weights(single)
    moved = max((ours[k].float() - start[k].float()).abs().max().item() for k in ours)
    assert moved > 1e-4
    assert sum(int(m.sum()) for m in live.values()) > 0.9 * sum(m.numel() for m in live.values())
    bad = sorted(((ours[k] - rank0[k]).abs()[live[k]].max().item(), k) for k in live
                 if live[k].any())[-5:]
    assert bad[-1][0] < 2e-6, "\n".join(map(str, bad))
    # (Per-process BatchNorm statistics would make every backbone weight differ here; the
    # running means are left out: they follow the biases before the norms, Adam-noise above.)
    # Rank 0 alone logs (once per iteration, losses averaged over the processes) and writes.
    records = [json.loads(x) for x in (two_runs / "work" / LOG_FILE).read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]
    assert records[0]["peak_mem_mb"] > 0 and records[0]["images_per_s"] > 0
    single_log = [json.loads(x) for x in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert records[0]["loss"] == pytest.approx(single_log[0]["loss"], rel=1e-5)
    state = torch.load(two_runs / "work" / CHECKPOINTS / "iter_0000002" / STATE_FILE,
                       weights_only=True)
    assert state["world_size"] == 2 and len(state["torch_rng"]) == 2
    assert not [p for p in (two_runs / "work").rglob(".*") if p.name.endswith(".tmp")]


def test_resume_under_two_processes_continues_exactly(two_runs, data_root):
    straight = torch.load(two_runs / "rank0-step2.pt", weights_only=True)
    for rank in (0, 1):
        resumed = torch.load(two_runs / f"rank{rank}-resumed.pt", weights_only=True)
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (rank, key)
    from vitadapter.weights.safetensors import load_safetensors

    _, metadata = load_safetensors(two_runs / "resumed" / LATEST)
    assert metadata["iteration"] == "2"
    records = (two_runs / "resumed" / LOG_FILE).read_text().splitlines()
    assert [json.loads(r)["iter"] for r in records] == [1, 2]
    # A single process may not resume a 2-process run: its batches would differ.
    with pytest.raises(Exception, match=r"processes: 2 in the work dir, 1 now"):
        trainer(data_root, two_runs / "resumed", batch_size=1, resume=True)


def test_precision_the_device_cannot_do_is_refused(data_root, tmp_path):
    with pytest.raises(Exception, match=r"--precision fp16 needs a CUDA device"):
        trainer(data_root, tmp_path, batch_size=1, precision="fp16", device="cpu")

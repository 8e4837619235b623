"""``vitadapter segment`` under torchrun: each rank segments its share; same files as one
process; one summary line; ``--skip-existing`` resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vitadapter.cli import main

from .conftest import CHECKPOINT, PHOTO, free_port, set_config, single_thread

MODEL = ["--config", str(set_config("tiny-upstream")), "--checkpoint", str(CHECKPOINT),
         "--device", "cpu"]


def folder(root: Path) -> Path:
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    rng = np.random.default_rng(2)
    images = root / "photos"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(photo[:100, :120]).save(images / "a.png")
    Image.fromarray(photo[50:150, 100:180]).save(images / "sub" / "b.png")
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(images / "c.png")
    Image.fromarray(photo[::2, ::2]).save(images / "d.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    return images


def outputs(out: Path) -> dict[str, object]:
    files: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        if path.suffix == ".png":
            files[str(path.relative_to(out))] = np.asarray(Image.open(path)).tolist()
        elif path.suffix == ".json":
            report = json.loads(path.read_text())
            files[str(path.relative_to(out))] = {k: v for k, v in report.items()
                                                 if k != "seconds"}
    return files


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "vitadapter", "segment", *args, *MODEL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_two_ranks_write_what_one_process_writes(tmp_path):
    images = folder(tmp_path)
    with single_thread():  # as each rank computes (OMP_NUM_THREADS=1): the confidences'
        # float32 sums depend on the thread count
        assert main(["segment", str(images), "--out", str(tmp_path / "one"), *MODEL]) == 1
    done = torchrun(str(images), "--out", str(tmp_path / "two"))
    assert done.returncode != 0  # the broken photo fails on its rank
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    assert len(outputs(tmp_path / "one")) == 16
    summary = [line for line in done.stderr.splitlines() if line.startswith("segmented")]
    assert summary == [f"segmented 4 image(s) into {tmp_path / 'two'}; 1 failed:"]
    (tmp_path / "two" / "sub" / "b_labels.png").unlink()
    again = torchrun(str(images), "--out", str(tmp_path / "two"), "--skip-existing")
    summary = [line for line in again.stderr.splitlines() if line.startswith("segmented")]
    assert summary == [f"segmented 1 image(s) into {tmp_path / 'two'}; 1 failed:"]
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")

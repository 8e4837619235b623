"""Helpers shared by the benchmark scripts: per-process peak RSS, one case per subprocess, a
random full-preset checkpoint."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

PRESET = "cocostuff164k-beit-adapter-l-m2f-896"


def peak_rss_gib() -> float:
    """This process's peak resident set size (a high-water mark: one case per process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(script: str, *args: str) -> dict:
    """Run ``script --case ARGS...`` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run([sys.executable, script, "--case", *args], capture_output=True,
                         text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{Path(script).name} --case {' '.join(args)} failed "
                         f"(exit {out.returncode}; its stderr above)")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, file=sys.stderr, flush=True)
    return row


def random_state_dict(preset: str = PRESET) -> dict:
    """A full-size state dict with random weights, in the released key layout."""
    import torch

    from vitadapter import build_model

    torch.manual_seed(0)
    model = build_model(preset)
    return {k: v for k, v in model.state_dict().items()
            if not k.endswith("relative_position_index")}


def write_random_checkpoint(path: Path, preset: str = PRESET) -> None:
    """Random weights as ``.safetensors`` (our writer) or, for any other suffix, a ``.pth``
    file of ``{"state_dict": ...}`` as the official releases hold."""
    import torch

    from vitadapter.weights.checkpoint import Checkpoint, write_safetensors

    state = random_state_dict(preset)
    if path.suffix == ".safetensors":
        write_safetensors(Checkpoint(state, source="random"), path)
    else:
        torch.save({"state_dict": state}, path)

"""The model needs neither a network nor a compiler."""

from __future__ import annotations

import subprocess
import sys

from .conftest import CHECKPOINT, set_config

SCRIPT = f"""
import socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import torch
from vitadapter import build_model, load_checkpoint
import vitadapter.backends.torch, vitadapter.cli, vitadapter.training.trainer  # what segment
                                                                                # and train load

model = build_model({str(set_config("tiny-upstream"))!r}, device="meta")
load_checkpoint(model, {str(CHECKPOINT)!r})
with torch.inference_mode():
    scores = model(torch.zeros(1, 3, 128, 128))
assert scores.shape == (1, 171, 32, 32) and torch.isfinite(scores).all()
compilers = [m for m in ("torch.utils.cpp_extension", "torch._inductor", "triton")
             if m in sys.modules]
assert not compilers, compilers
print("ok")
"""


def test_runs_offline_without_a_compiler():
    env = {"PATH": "/nonexistent", "CC": "/nonexistent/cc", "CXX": "/nonexistent/c++",
           "HOME": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

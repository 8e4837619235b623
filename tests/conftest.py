from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from vitadapter import Segmenter, build_model, load_checkpoint

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "reference"
CHECKPOINT = REFERENCE / "checkpoint.pth"
PHOTO = REFERENCE / "input.png"
SETS = ("tiny-upstream", "tiny-modelscope")

torch.set_num_threads(min(2, torch.get_num_threads()))


def free_port() -> int:
    """A loopback TCP port free a moment ago (for test servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_config(name: str) -> Path:
    return REFERENCE / name / "config.json"


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / name / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session", params=SETS)
def reference_set(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    """The two reference models with their checkpoint loaded, built once per session."""
    models = {}
    for name in SETS:
        model = build_model(set_config(name), device="meta")
        load_checkpoint(model, CHECKPOINT)
        models[name] = model
    return models


@pytest.fixture(scope="session")
def segmenters(tiny_models) -> dict[str, Segmenter]:
    """A Segmenter around each reference model."""
    return {name: Segmenter.from_model(model) for name, model in tiny_models.items()}


@pytest.fixture(scope="session")
def segmenter(segmenters) -> Segmenter:
    return segmenters["tiny-upstream"]

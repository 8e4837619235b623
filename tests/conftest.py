from __future__ import annotations

import os
import socket
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
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
# UperNet sets: the plain-ViT adapter (ADE20K classes) and the BEiT adapter (COCO-Stuff).
UPERNET_SETS = ("tiny-vit-adapter-upernet", "tiny-beit-adapter-upernet")

# One thread, in this process and (through the environment) in every process a test starts:
# the tiny models gain nothing from more, and on busy cores OpenMP's threads wait for each
# other (measured under 4 competing processes on 2 cores: 2.3x slower with 2 threads).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def free_port() -> int:
    """A loopback TCP port free a moment ago (for test servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def single_thread() -> Iterator[None]:
    """Compute as the test server does (OMP_NUM_THREADS=1): float32 sums, hence near-tie
    pixels, may differ with the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def merge_peak(slides: list) -> tuple[object, int]:
    """``merge_views(slides)`` and the peak of the Python-level memory it allocated."""
    from vitadapter.pipeline.merge import merge_views

    tracemalloc.start()
    try:
        merged = merge_views(slides)
        return merged, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def set_config(name: str) -> Path:
    return REFERENCE / name / "config.json"


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / name / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def assert_official_labels(labels: np.ndarray, name: str) -> None:
    """Equal to the set's official label map except where its top-2 scores tie within float32
    noise (``label_map_tie``): there any float32 implementation may pick either class, and
    ours does differently with the kernels (fast or reference path), the thread count, the
    machine and library versions (the same code flips one tie pixel of tiny-upstream here and
    not on an earlier CI machine)."""
    exp = expected(name)
    assert labels.shape == exp["label_map"].shape
    assert not ((labels != exp["label_map"]) & ~exp["label_map_tie"]).any()


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
def upernet_models() -> dict[str, torch.nn.Module]:
    """The UperNet reference models with their own checkpoints loaded."""
    models = {}
    for name in UPERNET_SETS:
        model = build_model(set_config(name), device="meta")
        load_checkpoint(model, REFERENCE / name / "checkpoint.pth")
        models[name] = model
    return models


@pytest.fixture(scope="session")
def segmenters(tiny_models) -> dict[str, Segmenter]:
    """A Segmenter around each reference model."""
    return {name: Segmenter.from_model(model) for name, model in tiny_models.items()}


@pytest.fixture(scope="session")
def segmenter(segmenters) -> Segmenter:
    return segmenters["tiny-upstream"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny custom dataset (squares and discs, 64px, four images in each split) that the
    training tests share."""
    import shutil

    from .test_training_data import write_custom

    root = tmp_path_factory.mktemp("shapes")
    write_custom(root, count=4, size=(64, 64))
    shutil.copytree(root / "images" / "train", root / "images" / "val")
    shutil.copytree(root / "annotations" / "train", root / "annotations" / "val")
    return root

"""The service's loading states, queue bound and timeout, made deterministic: the app around a
Segmenter-like stand-in whose inference waits for the test, served by uvicorn on a thread and
talked to over HTTP."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vitadapter.config import ModelConfig
from vitadapter.errors import CheckpointError
from vitadapter.pipeline.result import SegmentationResult

from .conftest import CHECKPOINT, free_port, set_config

pytest.importorskip("fastapi", reason="the serve extra is missing: pip install -e '.[test,serve]'")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from vitadapter.serve.app import Limits, create_app  # noqa: E402 (after the skip)

NUM_CLASSES = 171


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


class GatedSegmenter:
    """Segmenter-like: labels the left half 1 and the right half 0, once ``gate`` is open;
    the first ``failures`` calls raise instead."""

    name = "gated"
    config = ModelConfig(name="gated")
    class_names = tuple(f"class {i}" for i in range(NUM_CLASSES))
    palette = np.zeros((NUM_CLASSES, 3), np.uint8)
    device = "cpu"
    tta = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.failures = 0

    def segment(self, image: np.ndarray, *, tta: bool | None = None) -> SegmentationResult:
        self.calls += 1
        assert self.gate.wait(30), "the test never opened the gate"
        if self.calls <= self.failures:
            raise RuntimeError("out of memory, say")
        labels = np.zeros(image.shape[:2], np.int64)
        labels[:, : labels.shape[1] // 2] = 1
        return SegmentationResult(labels, self.class_names, self.palette,
                                  np.full(NUM_CLASSES, 0.5),
                                  np.bincount(labels.ravel(), minlength=NUM_CLASSES), image,
                                  self.name)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/health", timeout=5)


def segment(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/segment", content=small_png(), timeout=30)


def test_health_is_503_until_the_model_is_loaded():
    segmenter = GatedSegmenter()
    segmenter.gate.set()
    loaded = threading.Event()

    def load() -> GatedSegmenter:
        assert loaded.wait(30)
        return segmenter

    with serving(create_app(loader=load)) as url:
        response = health(url)
        assert response.status_code == 503 and response.json()["status"] == "loading"
        assert response.headers["retry-after"] == "5"
        refused = segment(url)
        assert refused.status_code == 503 and "loading" in refused.json()["error"]
        assert httpx.get(f"{url}/v1/model").status_code == 503
        loaded.set()
        wait_for(lambda: health(url).status_code == 200)
        answer = segment(url).json()
        assert answer["model"] == "gated" and (answer["width"], answer["height"]) == (40, 30)
        assert [(c["id"], c["pixels"]) for c in answer["classes"]] == [(0, 600), (1, 600)]


def test_a_model_that_fails_to_load_is_reported():
    failures: list[Exception] = []

    def load() -> GatedSegmenter:
        raise CheckpointError("weights.pth: not a checkpoint")

    with serving(create_app(loader=load, on_load_error=failures.append)) as url:
        wait_for(lambda: bool(failures))
        body = health(url).json()
        assert body["status"] == "failed" and "not a checkpoint" in body["error"]
        refused = segment(url)
        assert refused.status_code == 503 and "could not be loaded" in refused.json()["error"]


def test_beyond_the_queue_requests_get_503_and_the_loop_stays_free():
    segmenter = GatedSegmenter()
    with serving(create_app(segmenter, limits=Limits(max_queue=2))) as url, \
            ThreadPoolExecutor(2) as pool:
        admitted = [pool.submit(segment, url) for _ in range(2)]
        wait_for(lambda: health(url).json()["in_progress"] == 2)
        start = time.perf_counter()
        assert health(url).status_code == 200  # the event loop answers while inference runs
        assert time.perf_counter() - start < 1
        refused = segment(url)
        assert refused.status_code == 503 and "busy" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
        segmenter.gate.set()
        assert [f.result().status_code for f in admitted] == [200, 200]
        assert health(url).json()["in_progress"] == 0


def test_a_timed_out_request_keeps_its_place_until_inference_ends():
    """A forward pass cannot be interrupted: after its 504 the request still counts against
    the queue until the work really ends, then the place is free again."""
    segmenter = GatedSegmenter()
    with serving(create_app(segmenter, limits=Limits(max_queue=1, timeout=0.5))) as url:
        timed_out = segment(url)
        assert timed_out.status_code == 504 and "timeout" in timed_out.json()["error"]
        assert health(url).json()["in_progress"] == 1
        assert segment(url).status_code == 503
        segmenter.gate.set()
        wait_for(lambda: health(url).json()["in_progress"] == 0)
        assert segment(url).status_code == 200


def test_a_request_that_times_out_while_waiting_never_runs():
    segmenter = GatedSegmenter()
    with serving(create_app(segmenter, limits=Limits(max_queue=2, timeout=1))) as url, \
            ThreadPoolExecutor(2) as pool:
        running: Future = pool.submit(segment, url)
        wait_for(lambda: segmenter.calls == 1)
        waiting: Future = pool.submit(segment, url)
        assert running.result().status_code == 504
        assert waiting.result().status_code == 504
        assert health(url).json()["in_progress"] == 1  # the waiting job was dropped
        segmenter.gate.set()
        wait_for(lambda: health(url).json()["in_progress"] == 0)
        assert segmenter.calls == 1


def test_an_inference_failure_is_a_500_and_the_server_keeps_serving():
    segmenter = GatedSegmenter()
    segmenter.gate.set()
    segmenter.failures = 1
    with serving(create_app(segmenter)) as url:
        failed = segment(url)
        assert failed.status_code == 500
        assert failed.json() == {"error": "internal error (RuntimeError); see the server log"}
        assert segment(url).status_code == 200
        assert health(url).json()["in_progress"] == 0


def test_serve_without_the_extra_says_how_to_install_it(tmp_path):
    """Importing the package never needs the extra; the command explains what to install."""
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "import vitadapter, vitadapter.cli\n"
            "sys.exit(vitadapter.cli.main(['serve', '--config', sys.argv[1],"
            " '--checkpoint', sys.argv[2]]))")
    done = subprocess.run([sys.executable, "-c", code, str(set_config("tiny-upstream")),
                           str(CHECKPOINT)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "pip install 'vitadapter[serve]'" in done.stderr
    assert "fastapi" in done.stderr


def test_serve_exits_when_the_model_cannot_be_loaded(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vitadapter", "serve",
                           "--config", str(set_config("tiny-upstream")),
                           "--checkpoint", str(tmp_path / "missing.pth"),
                           "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "error: the model could not be loaded: checkpoint not found" in done.stderr

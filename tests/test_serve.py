"""``vitadapter serve`` as deployed: a real server process with the tiny reference model on a
free loopback port, talked to over real HTTP (and, for the page, by headless Chromium)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import (
    CHECKPOINT,
    PHOTO,
    assert_official_labels,
    free_port,
    set_config,
    single_thread,
)
from .helpers import png_with_header

pytest.importorskip("fastapi", reason="the serve extra is missing: pip install -e '.[test,serve]'")
httpx = pytest.importorskip("httpx")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
MAX_UPLOAD = 512 * 1024  # --max-upload-mb 0.5
MAX_PIXELS = 200_000  # the photo has 260 x 200 = 52,000
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1100,800")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    workdir: Path  # the server's working directory and TMPDIR, to stay empty

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        return int(kib) / 1024

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def post(self, content: bytes, query: str = "", **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/segment{query}", content=content, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    workdir = root / "cwd"
    workdir.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "vitadapter", "serve",
               "--config", str(set_config("tiny-upstream")), "--checkpoint", str(CHECKPOINT),
               "--device", "cpu", "--port", str(port), "--max-queue", "8",
               "--max-upload-mb", str(MAX_UPLOAD / 2**20), "--max-pixels", str(MAX_PIXELS),
               "--timeout", "30"]
    # One thread: the tests run on 2 shared cores, where more threads only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(workdir)}
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir)
    handle = Server(f"http://127.0.0.1:{port}", process, log, workdir)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"the server exited:\n{handle.tail()}"
            assert time.monotonic() < deadline, f"not healthy after 90 s:\n{handle.tail()}"
            try:
                if httpx.get(f"{handle.url}/v1/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield handle
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def reference(segmenter):
    """What the Python API gives for the photo, on one thread like the server."""
    with single_thread():
        return segmenter(PHOTO)


def png_array(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def multipart(data: bytes, name: str = "file") -> dict:
    return {"files": {name: ("photo.png", data, "image/png")}}


def test_health_model_and_openapi(server):
    assert httpx.get(f"{server.url}/v1/health").json() == {"status": "ok", "error": None,
                                                            "in_progress": 0}
    model = httpx.get(f"{server.url}/v1/model").json()
    assert model["name"] == "tiny-upstream" and model["dataset"] == "coco-stuff164k"
    assert model["num_classes"] == len(model["classes"]) == 171
    assert model["classes"][0] == {"id": 0, "name": "person", "color": [0, 192, 64]}
    assert (model["crop_size"], model["stride"]) == ([128, 128], [64, 64])
    assert (model["device"], model["behaviour"], model["tta"]) == ("cpu", "official", False)
    assert model["limits"] == {"max_queue": 8, "max_pixels": MAX_PIXELS,
                               "max_upload_bytes": MAX_UPLOAD, "timeout_seconds": 30.0,
                               "upload_timeout_seconds": 30.0}
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/segment", "/v1/health", "/v1/model"} <= set(schema["paths"])
    post = schema["paths"]["/v1/segment"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(post["requestBody"]["content"])
    ok = post["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/SegmentBody")
    assert "image/png" in ok
    for status in ("400", "413", "415", "422", "503", "504"):
        error = post["responses"][status]["content"]["application/json"]["schema"]
        assert error["$ref"].endswith("/ErrorBody"), status
    params = {p["name"]: p for p in post["parameters"]}
    assert set(params) == {"format", "tta", "alpha", "legend", "include_overlay"}
    assert all(p.get("description") for p in params.values())
    assert "SegmentBody" in schema["components"]["schemas"]
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_label_png_equals_the_segmenter(server, reference):
    photo = PHOTO.read_bytes()
    by_form = png_array(httpx.post(f"{server.url}/v1/segment?format=labels", timeout=60,
                                   **multipart(photo)))
    by_body = png_array(server.post(photo, "?format=labels",
                                    headers={"Content-Type": "image/png"}))
    assert by_form.dtype == np.uint8 and by_form.shape == (200, 260)
    assert np.array_equal(by_form, reference.label_map)
    assert_official_labels(by_form, "tiny-upstream")
    assert np.array_equal(by_body, by_form)


def test_json_is_complete_and_consistent(server, reference):
    response = httpx.post(f"{server.url}/v1/segment", timeout=60, **multipart(PHOTO.read_bytes()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["width"], body["height"], body["tta"]) == (
        "tiny-upstream", 260, 200, False)
    assert body["overlay"] is None
    classes = body["classes"]
    assert sum(c["pixels"] for c in classes) == 260 * 200
    assert abs(sum(c["share"] for c in classes) - 1) < 1e-9
    assert [c["id"] for c in classes] == [r["id"] for r in reference.summary()]
    assert [c["pixels"] for c in classes] == [r["pixels"] for r in reference.summary()]
    assert [c["share"] for c in classes] == sorted((c["share"] for c in classes), reverse=True)
    assert all(0 < c["score"] <= 1 and len(c["color"]) == 3 for c in classes)
    timing = body["timing"]
    assert 0 < timing["inference_seconds"] <= timing["total_seconds"]
    assert timing["queued_seconds"] >= 0


def test_color_overlay_and_embedded_overlay(server, reference):
    photo = PHOTO.read_bytes()
    assert np.array_equal(png_array(server.post(photo, "?format=color")), reference.colorize())
    plain = png_array(server.post(photo, "?format=overlay&legend=false&alpha=0.3"))
    assert np.array_equal(plain, reference.overlay(0.3))
    legend = png_array(server.post(photo, "?format=overlay"))
    assert legend.shape[1] > 260 and np.array_equal(legend[:200, :260], reference.overlay(0.5))
    body = server.post(photo, "?include_overlay=true&legend=false").json()
    prefix = "data:image/png;base64,"
    assert body["overlay"].startswith(prefix)
    embedded = Image.open(io.BytesIO(base64.b64decode(body["overlay"][len(prefix):])))
    assert np.array_equal(np.asarray(embedded), reference.overlay(0.5))


def test_tta(server, segmenter):
    body = server.post(PHOTO.read_bytes(), "?tta=true").json()
    with single_thread():
        reference = segmenter(PHOTO, tta=True)
    assert body["tta"] is True
    assert [(c["id"], c["pixels"]) for c in body["classes"]] == [
        (r["id"], r["pixels"]) for r in reference.summary()]


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


BOUNDARY = "----vitadapter-test"
BAD_INPUTS = {
    # name: (request keyword arguments, expected status, words of the error message)
    "empty body": ({"content": b""}, 400, "empty upload"),
    "empty file field": ({"files": {"file": ("a.png", b"", "image/png")}}, 400, "empty upload"),
    "text": ({"content": b"hello, this is not a picture"}, 415, "not an image"),
    "pdf": ({"content": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n"}, 415,
            "not an image"),
    "truncated PNG": ({"content": PHOTO.read_bytes()[:40_000]}, 422, "truncated"),
    "truncated JPEG": ({"content": encoded(Image.open(PHOTO).convert("RGB"), "JPEG")[:3000]},
                       422, "truncated"),
    "JPEG cut inside its header": ({"content": encoded(Image.open(PHOTO).convert("RGB"),
                                                       "JPEG")[:500]}, 422, "truncated"),
    "oversized upload": ({"content": os.urandom(MAX_UPLOAD + 1)}, 413, "larger than the limit"),
    "oversized multipart": ({"files": {"file": ("a.png", os.urandom(2 * MAX_UPLOAD),
                                                "image/png")}}, 413, "larger than the limit"),
    "too many pixels": ({"content": encoded(Image.new("RGB", (500, 500)))}, 413,
                        "more than the limit of 200000"),
    "decompression bomb": ({"content": png_with_header(50_000, 50_000)}, 413,
                           "too many pixels"),
    "bomb, pixels under Pillow's own limit": ({"content": png_with_header(4000, 4000)}, 413,
                                              "4000x4000 = 16000000 pixels"),
    # OpenCV alone would decode Radiance HDR: 60000 x 60000 floats. Refused from the header.
    "format only OpenCV reads": ({"content": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n"
                                             b"-Y 60000 +X 60000\n" + b"\x02\x02" * 64},
                                 415, "not an image"),
    "multipart without boundary": ({"content": b"--x\r\n", "headers": {
        "Content-Type": "multipart/form-data"}}, 400, "boundary"),
    "malformed multipart": ({"content": b"garbage without the boundary", "headers": {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}}, 400, "multipart"),
    "multipart without file": ({"data": {"note": "no file"}, "files": {
        "other": (None, b"x")}}, 400, "no 'file' field"),
    "unknown format": ({"content": PHOTO.read_bytes(), "params": {"format": "gif"}}, 422,
                       "format"),
    "alpha out of range": ({"content": PHOTO.read_bytes(), "params": {"alpha": "2"}}, 422,
                           "alpha"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, case):
    request, status, words = BAD_INPUTS[case]
    response = httpx.post(f"{server.url}/v1/segment", timeout=60, **request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert server.post(PHOTO.read_bytes()).status_code == 200


def test_unknown_paths_answer_json(server):
    response = httpx.get(f"{server.url}/v2/segment")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = httpx.get(f"{server.url}/v1/segment")
    assert response.status_code == 405 and "error" in response.json()


def test_32_concurrent_clients_get_200_or_503(server):
    photo = PHOTO.read_bytes()
    assert server.post(photo).status_code == 200  # warm
    before = server.rss_mib()
    start = threading.Barrier(32)

    def client(_: int) -> tuple[int, str | None, bytes]:
        with httpx.Client(timeout=60) as session:
            start.wait()
            response = session.post(f"{server.url}/v1/segment?format=labels", content=photo)
            return response.status_code, response.headers.get("retry-after"), response.content

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(client, range(32)))
    after = server.rss_mib()
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 8, statuses  # the 8 admitted at once all finish
    assert statuses.count(503) >= 1, statuses
    for status, retry_after, content in answers:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            assert "busy" in json.loads(content)["error"]
    assert after - before < 150, f"RSS grew from {before:.0f} to {after:.0f} MiB"
    assert server.post(photo).status_code == 200


def segment_posts(server: Server) -> int:
    """The POST /v1/segment requests in the server's access log so far."""
    return server.log.read_text(errors="replace").count('"POST /v1/segment')


def test_docs_assets_are_served_locally(server):
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200
    assert "docs-assets/swagger-ui-bundle.js" in page.text and "cdn." not in page.text
    script = httpx.get(f"{server.url}/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_page_in_headless_chromium(server, reference, tmp_path):
    """Upload the photo on the page and find the overlay and the legend. Selenium drives
    Debian's chromium through Debian's chromedriver (same version, given by path, so Selenium
    Manager never downloads anything); a screenshot goes to test-artifacts/."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("no chromium + chromedriver (Debian: apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        driver.get(f"{server.url}/")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "model-name").text == "tiny-upstream")
        # the empty state: an invitation, no result area, no broken image
        assert not driver.find_element(By.ID, "result").is_displayed()
        assert not driver.find_element(By.ID, "overlay").is_displayed()
        assert driver.find_element(By.ID, "status").text == "Choose a photo, then Segment."
        posts = segment_posts(server)
        driver.find_element(By.ID, "file").send_keys(str(PHOTO.resolve()))
        time.sleep(0.5)
        assert segment_posts(server) == posts  # choosing a file does not submit
        driver.find_element(By.ID, "submit").click()
        driver.find_element(By.ID, "submit").click()  # a second click while it runs: ignored
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "const img = document.getElementById('overlay');"
            "return !document.getElementById('result').hidden && img.complete"
            " && img.naturalWidth > 0;"))
        assert segment_posts(server) == posts + 1
        driver.execute_script("const s = document.getElementById('alpha'); s.value = '0.8';"
                              "s.dispatchEvent(new Event('input'));")
        assert driver.find_element(By.ID, "overlay").value_of_css_property("opacity") == "0.8"
        assert driver.find_element(By.ID, "photo").get_attribute("naturalWidth") == "260"
        time.sleep(0.5)
        assert segment_posts(server) == posts + 1  # the opacity needs no new inference
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
        size = driver.execute_script("const img = document.getElementById('overlay');"
                                     "return [img.naturalWidth, img.naturalHeight];")
        entries = driver.find_elements(By.CSS_SELECTOR, "#legend .legend-entry")
        rows = reference.summary()
        assert size == [260, 200]
        assert [e.find_element(By.CLASS_NAME, "name").text for e in entries] == [
            r["name"] for r in rows]
        assert [e.find_element(By.CLASS_NAME, "share").text for e in entries] == [
            f"{100 * r['share']:.1f} %" for r in rows]
        assert [e.get_attribute("data-class-id") for e in entries] == [str(r["id"]) for r in rows]
        swatch = entries[0].find_element(By.CLASS_NAME, "swatch")
        assert swatch.value_of_css_property("background-color") == "rgba({}, {}, {}, 1)".format(
            *rows[0]["color"])
        assert not driver.find_element(By.ID, "error").is_displayed()
        problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not problems, problems  # no script error, no refused CSP rule
        # an error hides the earlier result
        notes = tmp_path / "notes.png"
        notes.write_bytes(b"shopping list")
        driver.find_element(By.ID, "file").send_keys(str(notes))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "not an image" in driver.find_element(By.ID, "error").text
        assert not driver.find_element(By.ID, "result").is_displayed()
        # /docs works without the network: its assets come from the server
        driver.get(f"{server.url}/docs")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const t = document.querySelector('.swagger-ui .info .title');"
            "return t && t.textContent.startsWith('vitadapter');"))
    finally:
        driver.quit()


def test_no_request_wrote_a_file(server):
    """Last in this module: after every upload above, the server's working directory and its
    TMPDIR (where a spooled multipart upload would land) are still empty."""
    assert list(server.workdir.iterdir()) == []
    assert server.process.poll() is None, server.tail()

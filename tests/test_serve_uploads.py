"""Upload checks of the service: a truncated image of a supported format is 422 (as the
README promises), anything else 415; a slow upload has its own short deadline."""

from __future__ import annotations

import io
import socket
import time

import pytest
from PIL import Image

from .conftest import PHOTO

pytest.importorskip("fastapi", reason="the serve extra is missing: pip install -e '.[test,serve]'")
httpx = pytest.importorskip("httpx")

from vitadapter.serve.app import Limits, create_app  # noqa: E402 (after the skip)
from vitadapter.serve.errors import ServiceError  # noqa: E402
from vitadapter.serve.uploads import check_image  # noqa: E402

from .test_serve_queue import GatedSegmenter, health, segment, serving, wait_for  # noqa: E402


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "name", "cut"), [
    ("JPEG", "JPEG", 20), ("PNG", "PNG", 20), ("GIF", "GIF", 20), ("TIFF", "TIFF", 20),
    ("WEBP", "WebP", 20), ("BMP", "BMP", 20), ("PPM", "PPM", 5), ("JPEG2000", "JPEG 2000", 20)])
def test_a_truncated_image_is_422(fmt, name, cut):
    with pytest.raises(ServiceError) as caught:
        check_image(encoded(fmt)[:cut], 10**8)
    assert caught.value.status == 422, caught.value.message
    assert caught.value.message.startswith(f"a {name} image that is truncated or damaged: its "
                                           "header cannot be read")


def test_a_jpeg_cut_to_500_bytes_is_422():
    with pytest.raises(ServiceError) as caught:
        check_image(encoded("JPEG")[:500], 10**8)
    assert caught.value.status == 422


@pytest.mark.parametrize("data", [b"hello, this is not a picture", b"%PDF-1.4\n", b"BM",
                                  b"P7 not ppm", b"RIFF\0\0\0\0WAVEfmt "])
def test_what_is_no_image_is_415(data):
    with pytest.raises(ServiceError) as caught:
        check_image(data, 10**8)
    assert caught.value.status == 415


def test_a_stalled_upload_gets_408_after_the_upload_timeout_and_frees_its_place():
    segmenter = GatedSegmenter()
    segmenter.gate.set()
    limits = Limits(max_queue=1, timeout=60, upload_timeout=0.5)
    with serving(create_app(segmenter, limits=limits)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                         b"Content-Type: image/png\r\n\r\n" + encoded("PNG")[:1000])
            start = time.monotonic()
            received = b""
            while not received.endswith(b"}") and (chunk := sock.recv(65536)):
                received += chunk
            waited = time.monotonic() - start
        answer = received.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "the upload did not arrive within 0.5 s (--upload-timeout)" in answer
        assert waited < 10  # not the 60 s of --timeout
        wait_for(lambda: health(url).json()["in_progress"] == 0)
        assert segment(url).status_code == 200  # the place is free again

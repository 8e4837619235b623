"""Release-weight download (resumable), verification and cache, against a loopback server."""

from __future__ import annotations

import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vitadapter import CheckpointError, Segmenter, resolve_config
from vitadapter.files import sha256_of
from vitadapter.weights.download import cached_weights_path, fetch_weights

from .conftest import CHECKPOINT, PHOTO, assert_official_labels, set_config


class ReleaseServer:
    """Serves one file with Range support; can cut the first response short."""

    def __init__(self, payload: bytes, cut_first_after: int | None = None) -> None:
        self.payload = payload
        self.cut = cut_first_after
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.headers.get("Range"))
                if self.path != "/release.zip":
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut is not None:
                    body, server.cut = body[:server.cut], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/release.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReleaseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def release_zip(tmp_path) -> bytes:
    path = tmp_path / "release.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(CHECKPOINT, "tiny_release.pth.tar")
    return path.read_bytes()


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("VITADAPTER_HOME", str(home))
    return home


def tiny_config(url: str):
    return resolve_config(set_config("tiny-upstream")).replace(name="tiny-release",
                                                               weights_url=url)


def test_interrupted_download_resumes_and_is_cached(release_zip, cache_home):
    with ReleaseServer(release_zip, cut_first_after=len(release_zip) // 3) as server:
        cfg = tiny_config(server.url)
        with pytest.raises(CheckpointError, match="run the same command again to resume"):
            fetch_weights(cfg, progress=False)
        [part] = (cache_home / "downloads").glob("*release.zip.part")
        assert part.stat().st_size == len(release_zip) // 3
        path = fetch_weights(cfg, progress=False)
        assert server.requests == [None, f"bytes={len(release_zip) // 3}-"]
        assert path == cached_weights_path(cfg) and path.suffix == ".safetensors"
        assert not list((cache_home / "downloads").glob("*release.zip"))

        segmenter = Segmenter(config=cfg, device="cpu")  # no checkpoint: from the cache
        assert len(server.requests) == 2
    assert_official_labels(segmenter(PHOTO).label_map, "tiny-upstream")
    assert segmenter.class_names[0] == "person"


def test_corrupt_download_is_not_cached(release_zip, cache_home):
    damaged = bytearray(release_zip)
    damaged[len(damaged) // 2] ^= 0xFF
    with ReleaseServer(bytes(damaged)) as server:
        cfg = tiny_config(server.url)
        with pytest.raises(CheckpointError):
            fetch_weights(cfg, progress=False)
    assert not cached_weights_path(cfg).exists()


def test_offline_message_names_the_url_and_the_alternative():
    cfg = tiny_config("http://127.0.0.1:9/release.zip")
    with pytest.raises(CheckpointError, match=r"cannot download http://127\.0\.0\.1:9/"
                                              r"release\.zip: .*--checkpoint PATH"):
        fetch_weights(cfg, progress=False)


def test_config_without_release_weights():
    cfg = resolve_config(set_config("tiny-upstream"))
    with pytest.raises(CheckpointError, match="has no release weights to download"):
        Segmenter(config=cfg, device="cpu")


class OddServer(ReleaseServer):
    """Serves ``bodies`` in turn, each as a 200 answer, without Content-Length for bytes."""

    def __init__(self, *bodies: bytes | str) -> None:
        super().__init__(b"")
        queue = list(bodies)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.headers.get("Range"))
                body = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(200)
                if isinstance(body, str):  # an error page, with its length
                    body = body.encode()
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd.RequestHandlerClass = Handler


@pytest.mark.parametrize("bad", ["<!DOCTYPE html><html><body>Rate limited</body></html>",
                                 "truncated"])
def test_a_bad_download_is_deleted_not_reused(bad, release_zip, cache_home):
    first = release_zip[: len(release_zip) // 2] if bad == "truncated" else bad
    with OddServer(first, release_zip) as server:
        cfg = tiny_config(server.url)
        with pytest.raises(CheckpointError, match=r"is not the release weights .*it was deleted, "
                                                  r"run the same command again"):
            fetch_weights(cfg, progress=False)
        assert [p.name.split("-", 1)[1] for p in (cache_home / "downloads").iterdir()] == [
            "release.zip.lock"]
        assert fetch_weights(cfg, progress=False) == cached_weights_path(cfg)


def test_pinned_sha256_is_checked(release_zip, cache_home):
    import hashlib

    with ReleaseServer(release_zip) as server:
        cfg = tiny_config(server.url).replace(weights_sha256="0" * 64)
        digest = hashlib.sha256(release_zip).hexdigest()
        with pytest.raises(CheckpointError, match=f"SHA-256 {digest}, expected 0000"):
            fetch_weights(cfg, progress=False)
        cfg = cfg.replace(weights_sha256=hashlib.sha256(release_zip).hexdigest())
        assert fetch_weights(cfg, progress=False).is_file()


def test_concurrent_first_downloads_share_one(release_zip, cache_home):
    from concurrent.futures import ThreadPoolExecutor

    with ReleaseServer(release_zip) as server:
        cfg = tiny_config(server.url)
        with ThreadPoolExecutor(2) as pool:
            paths = list(pool.map(lambda _: fetch_weights(cfg, progress=False), range(2)))
        assert len(server.requests) == 1
    assert paths == [cached_weights_path(cfg)] * 2


def test_damaged_cache_names_the_file_to_delete(release_zip, cache_home):
    with ReleaseServer(release_zip) as server:
        cfg = tiny_config(server.url)
        cached = fetch_weights(cfg, progress=False)
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"delete {cached} and run again"):
        Segmenter(config=cfg, device="cpu")


def test_quiet_logging_silences_the_download_bar(release_zip, cache_home, capsys, caplog):
    import logging

    with ReleaseServer(release_zip) as server:
        cfg = tiny_config(server.url)
        with caplog.at_level(logging.WARNING, logger="vitadapter"):  # vitadapter -q
            fetch_weights(cfg)
        assert "download release.zip" not in capsys.readouterr().err
        cached_weights_path(cfg).unlink()
        with caplog.at_level(logging.INFO, logger="vitadapter"):
            fetch_weights(cfg)
        assert "download release.zip" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../../../tmp/escaped", "/abs/olute", "..", "a/b\\c",
                                  ".hidden", ""])
def test_a_config_name_is_never_a_cache_path(name, release_zip, cache_home, tmp_path):
    with ReleaseServer(release_zip) as server:
        cfg = tiny_config(server.url).replace(name=name)
        path = fetch_weights(cfg, progress=False)
    assert path.parent == cache_home and not path.name.startswith(".")
    assert {p.parent for p in cache_home.rglob("*")} <= {cache_home, cache_home / "downloads"}
    assert not (tmp_path / "escaped.safetensors").exists()
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["weights_url"] == server.url and record["sha256"] == sha256_of(path)


def test_a_custom_config_reusing_a_preset_name_never_shares_its_cache(release_zip, cache_home,
                                                                      tmp_path):
    other = tmp_path / "other.zip"
    other.write_bytes(release_zip)
    with ReleaseServer(release_zip) as server:
        preset = tiny_config(server.url)
        custom = preset.replace(weights_url=other.as_uri())  # same name, its own file
        mine = fetch_weights(custom, progress=False)
        assert server.requests == []  # the custom file never stands in for the preset's
        theirs = fetch_weights(preset, progress=False)
        assert len(server.requests) == 1 and theirs != mine
        # An entry carried over from the other source is not used: stored again from the URL
        for suffix in (".safetensors", ".json"):
            theirs.with_suffix(suffix).write_bytes(mine.with_suffix(suffix).read_bytes())
        assert fetch_weights(preset, progress=False) == theirs
        assert len(server.requests) == 2
        assert json.loads(theirs.with_suffix(".json").read_text())["weights_url"] == server.url
        # A file replaced under its own record is refused, naming the file to delete
        theirs.write_bytes(theirs.read_bytes()[:-8] + b"\0" * 8)
        with pytest.raises(CheckpointError, match=f"{theirs} changed since they were stored "
                                                  f".*delete {theirs}"):
            fetch_weights(preset, progress=False)


def test_weights_without_their_record_are_stored_again(release_zip, cache_home):
    with ReleaseServer(release_zip) as server:
        cfg = tiny_config(server.url)
        path = fetch_weights(cfg, progress=False)
        path.with_suffix(".json").unlink()  # as a kill between the two files leaves it
        assert fetch_weights(cfg, progress=False) == path
        assert len(server.requests) == 2 and path.with_suffix(".json").is_file()

"""Release weights for presets: a local cache, and a resumable download of the official files.

The cache lives in ``$VITADAPTER_HOME`` (default ``~/.cache/vitadapter``). A preset's release
file is downloaded once (resuming an interrupted transfer), checked (the zip's CRCs, then every
key and shape against the preset's model), and stored for fast, pickle-free loads; the
downloaded archive is then removed.

A cache entry is named after the source, never after the config alone: ``<name>-<hash>``, the
config's name reduced to a safe file-name component and the first 16 hex digits of the SHA-256
of the weights URL. Next to ``<entry>.safetensors`` lies ``<entry>.json`` (written last) with
the URL, the pinned archive SHA-256 and the SHA-256 of the stored file: an entry is used only
for the same URL and pin, and only while its content still has that SHA-256, so a custom config
reusing a preset's name can never fill or take that preset's entry.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from ..config.schema import ModelConfig
from ..errors import CheckpointError
from ..files import atomic_path, sha256_of, write_text_atomic
from ..progress import Progress
from .checkpoint import Checkpoint, apply_state_dict, read_checkpoint, write_safetensors

logger = logging.getLogger(__name__)

ENV_HOME = "VITADAPTER_HOME"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "vitadapter"


def safe_component(text: str, fallback: str) -> str:
    """``text`` as one harmless file-name component: letters, digits, ``.``, ``_`` and ``-``
    only, no leading dot (so never ``..`` or hidden), at most 64 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".")[:64]
    return cleaned or fallback


def _source_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def cached_weights_path(cfg: ModelConfig) -> Path:
    """Where the release weights of ``cfg`` are cached: named after its weights URL (and a
    safe form of its name), inside :func:`cache_dir` whatever the name holds."""
    stem = f"{safe_component(cfg.name, 'model')}-{_source_key(cfg.weights_url or '')}"
    return cache_dir() / f"{stem}.safetensors"


def _record_path(target: Path) -> Path:
    return target.with_suffix(".json")


def _source_record(cfg: ModelConfig) -> dict[str, str | None]:
    return {"weights_url": cfg.weights_url, "weights_sha256": cfg.weights_sha256}


def _cached(cfg: ModelConfig, target: Path) -> bool:
    """Whether ``target`` holds the weights of ``cfg``'s source: its record names the same URL
    and pin, and the file's SHA-256 is the one recorded when it was stored. A file without a
    record (a store interrupted before writing it) is not an entry: it is stored again."""
    record_path = _record_path(target)
    if not target.is_file() or not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(record, dict) or any(record.get(key) != value
                                           for key, value in _source_record(cfg).items()):
        return False
    if record.get("sha256") != sha256_of(target):
        raise CheckpointError(
            f"the cached weights {target} changed since they were stored from "
            f"{cfg.weights_url} (SHA-256 {sha256_of(target)}, stored "
            f"{record.get('sha256')}): delete {target} and run again to download them again")
    return True


def fetch_weights(cfg: ModelConfig, *, progress: bool | None = None) -> Path:
    """The cached safetensors weights of ``cfg``, downloading, verifying and converting them
    first if needed. Processes sharing a cache take turns (a lock per file): the second one
    finds the weights stored by the first. ``progress`` (a bar on stderr) defaults to on
    unless logging is quieter than INFO (``vitadapter -q``)."""
    if progress is None:
        progress = logger.isEnabledFor(logging.INFO)
    if cfg.weights_access:
        raise CheckpointError(gated_message(cfg))
    if not cfg.weights_url:
        raise CheckpointError(f"model {cfg.name!r} has no release weights to download: pass "
                              "a checkpoint file (checkpoint=... / --checkpoint PATH)")
    target = cached_weights_path(cfg)
    if _cached(cfg, target):
        return target
    # One download per URL, whatever the configs naming it are called.
    name = safe_component(Path(urlparse(cfg.weights_url).path).name, "weights")
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive_path = downloads / f"{_source_key(cfg.weights_url)}-{name}"
    with FileLock(str(archive_path) + ".lock"):
        if _cached(cfg, target):  # stored by another process while this one waited
            return target
        archive = download(cfg.weights_url, archive_path, progress=progress, label=name)
        try:
            ckpt = verify_release(cfg, archive)
        except CheckpointError as exc:
            archive.unlink(missing_ok=True)  # never reuse a file that failed verification
            raise CheckpointError(
                f"the file downloaded from {cfg.weights_url} is not the release weights "
                f"({exc}); it was deleted, run the same command again to download it again"
            ) from None
        _record_path(target).unlink(missing_ok=True)  # no record until the new file is whole
        with atomic_path(target) as partial:
            write_safetensors(ckpt, partial)
        record = {**_source_record(cfg), "config_name": cfg.name, "sha256": sha256_of(target)}
        write_text_atomic(_record_path(target), json.dumps(record, indent=2) + "\n")
        archive.unlink()
    logger.info("stored %s", target)
    return target


def gated_message(cfg: ModelConfig) -> str:
    """What to do for weights whose download is gated (Meta's DINOv3 licence form)."""
    files = [Path(urlparse(url).path).name for url in (cfg.weights_url, cfg.backbone_weights_url)
             if url]
    if cfg.weights_url:
        usage = ("then pass them: --checkpoint HEAD --backbone-checkpoint BACKBONE (Python: "
                 "checkpoint=..., backbone_checkpoint=...)")
    else:
        usage = (f"then fine-tune it: vitadapter train --model {cfg.name} "
                 "--backbone-checkpoint BACKBONE ...")
    return (f"the weights of {cfg.name!r} are not downloaded automatically: Meta gates them. "
            f"Request access at {cfg.weights_access} (Meta e-mails the download links), "
            f"download {' and '.join(files)}, {usage}")


def verify_release(cfg: ModelConfig, archive: Path) -> Checkpoint:
    """Read ``archive`` after checking it is what ``cfg`` expects: its SHA-256 where the
    config pins one, else the archive's integrity (CRCs) and a strict load of every key and
    shape into the model of ``cfg``."""
    logger.info("verifying %s", archive.name)
    with archive.open("rb") as file:
        head = file.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"{")):
        raise CheckpointError("the server sent a web page or an error message")
    if cfg.weights_sha256 is not None:
        digest = sha256_of(archive)
        if digest != cfg.weights_sha256.lower():
            raise CheckpointError(f"SHA-256 {digest}, expected {cfg.weights_sha256}")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise CheckpointError(f"the archive member {bad} is damaged")
    ckpt = read_checkpoint(archive)
    from ..modeling.build import build_model  # torch is only needed once weights are really used

    apply_state_dict(build_model(cfg, device="meta"), ckpt.state_dict, source=str(archive))
    return ckpt


def download(url: str, dest: Path, *, progress: bool = True, label: str | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial transfer (``dest.part``);
    ``label`` names it on the progress bar (default: the file name)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "vitadapter"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our partial file is unusable: start over
            part.unlink()
            return download(url, dest, progress=progress, label=label)
        raise CheckpointError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(
            f"cannot download {url}: {reason}. Without network access, fetch that file on "
            "another machine and pass it with --checkpoint PATH (checkpoint=PATH in Python)"
        ) from None
    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if resumed:
            logger.info("resuming %s at %.1f MiB", label or dest.name, offset / 2**20)
        received = offset
        with open(part, "ab" if resumed else "wb") as out, \
                Progress(total, f"download {label or dest.name}", unit="B",
                         enabled=progress) as bar:
            bar.advance(offset)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.advance(len(chunk))
            except (OSError, TimeoutError, http.client.HTTPException) as exc:
                raise CheckpointError(
                    f"download of {url} interrupted after {received / 2**20:.1f} MiB ({exc}); "
                    "run the same command again to resume") from None
    if total is not None and received != total:
        raise CheckpointError(f"download of {url} stopped at {received} of {total} bytes; run "
                              "the same command again to resume")
    os.replace(part, dest)
    return dest

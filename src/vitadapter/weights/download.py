"""Release weights for presets: a local cache, and a resumable download of the official files.

The cache lives in ``$VITADAPTER_HOME`` (default ``~/.cache/vitadapter``). A preset's release
file is downloaded once (resuming an interrupted transfer), checked (the zip's CRCs, then every
key and shape against the preset's model), and stored as ``<preset>.safetensors`` for fast,
pickle-free loads; the downloaded archive is then removed.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from ..config.schema import ModelConfig
from ..errors import CheckpointError
from ..files import sha256_of
from ..progress import Progress
from .checkpoint import Checkpoint, apply_state_dict, read_checkpoint, write_safetensors

logger = logging.getLogger(__name__)

ENV_HOME = "VITADAPTER_HOME"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "vitadapter"


def cached_weights_path(cfg: ModelConfig) -> Path:
    return cache_dir() / f"{cfg.name}.safetensors"


def fetch_weights(cfg: ModelConfig, *, progress: bool | None = None) -> Path:
    """The cached safetensors weights of ``cfg``, downloading, verifying and converting them
    first if needed. Processes sharing a cache take turns (a lock per file): the second one
    finds the weights stored by the first. ``progress`` (a bar on stderr) defaults to on
    unless logging is quieter than INFO (``vitadapter -q``)."""
    if progress is None:
        progress = logger.isEnabledFor(logging.INFO)
    if cfg.weights_access:
        raise CheckpointError(gated_message(cfg))
    target = cached_weights_path(cfg)
    if target.is_file():
        return target
    if not cfg.weights_url:
        raise CheckpointError(f"model {cfg.name!r} has no release weights to download: pass "
                              "a checkpoint file (checkpoint=... / --checkpoint PATH)")
    name = Path(urlparse(cfg.weights_url).path).name or f"{cfg.name}.zip"
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with FileLock(str(downloads / f"{name}.lock")):
        if target.is_file():  # stored by another process while this one waited
            return target
        archive = download(cfg.weights_url, downloads / name, progress=progress)
        try:
            ckpt = verify_release(cfg, archive)
        except CheckpointError as exc:
            archive.unlink(missing_ok=True)  # never reuse a file that failed verification
            raise CheckpointError(
                f"the file downloaded from {cfg.weights_url} is not the release weights "
                f"({exc}); it was deleted, run the same command again to download it again"
            ) from None
        partial = target.with_name(target.name + ".tmp.safetensors")
        write_safetensors(ckpt, partial)
        os.replace(partial, target)
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


def download(url: str, dest: Path, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial transfer (``dest.part``)."""
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
            return download(url, dest, progress=progress)
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
            logger.info("resuming %s at %.1f MiB", dest.name, offset / 2**20)
        received = offset
        with open(part, "ab" if resumed else "wb") as out, \
                Progress(total, f"download {dest.name}", unit="B", enabled=progress) as bar:
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

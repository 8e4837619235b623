"""The training work dir: what a run writes, and how it is read back to resume.

::

    WORK_DIR/config.json           the model as trained (``segment --config`` reads it)
    WORK_DIR/checkpoints/iter_0000020/weights.safetensors   trainable tensors + class metadata
    WORK_DIR/checkpoints/iter_0000020/train_state.pt        optimizer, RNG, iteration, identity
    WORK_DIR/last_checkpoint       the newest checkpoint's folder name (written after it)
    WORK_DIR/latest.safetensors    that checkpoint's weights (a hard link, else a copy)
    WORK_DIR/best.safetensors      the weights of the best val mIoU so far
    WORK_DIR/log.jsonl             one JSON object per logged iteration and per evaluation
    WORK_DIR/curves.png            loss and val mIoU, redrawn at each evaluation and save
    WORK_DIR/.train.lock(.json)    held by the run in progress (pid, host, start time)

A save is one unit: both files of a checkpoint are written and fsynced in a hidden temporary
folder that is then renamed to ``checkpoints/iter_N`` (:func:`~vitadapter.files.atomic_dir`), so
a folder under its final name is complete; a kill or a full disk leaves at most a temporary
folder, which the next run removes and names. ``last_checkpoint`` and ``latest.safetensors``
follow it; a resume takes the newest complete folder (the weights checked against the SHA-256
in its state). The newest ``keep`` checkpoints are kept, older ones removed after a save.
Every other file is written under a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from ..errors import TrainingError
from ..files import atomic_dir, atomic_path, sha256_of, write_text_atomic
from ..weights.safetensors import save_safetensors

logger = logging.getLogger(__name__)

CONFIG_FILE, LATEST, BEST = "config.json", "latest.safetensors", "best.safetensors"
LOG_FILE, CURVES = "log.jsonl", "curves.png"
CHECKPOINTS, POINTER = "checkpoints", "last_checkpoint"
WEIGHTS, STATE_FILE = "weights.safetensors", "train_state.pt"
LOCK = ".train.lock"
# What a run writes at the top of the work dir (set aside when a run that never saved is
# followed by a fresh one).
RUN_FILES = (CONFIG_FILE, LATEST, BEST, LOG_FILE, CURVES, POINTER)
_PREFIX = "iter_"
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass(frozen=True)
class SavedCheckpoint:
    """A complete checkpoint folder."""

    path: Path
    iteration: int

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def state(self) -> Path:
        return self.path / STATE_FILE


def checkpoint_name(iteration: int) -> str:
    return f"{_PREFIX}{iteration:07d}"


class WorkDir:
    """The files of one work dir; ``lock`` before writing (one run at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints_dir = self.path / CHECKPOINTS
        self._lock: FileLock | None = None
        self._created = False

    # -- the lock ------------------------------------------------------------------------------

    @property
    def holder_file(self) -> Path:
        return self.path / f"{LOCK}.json"

    def lock(self) -> None:
        """Hold the work dir for this process until :meth:`unlock` (or its exit); another
        holder makes this a :class:`TrainingError` naming it."""
        if self.path.exists() and not self.path.is_dir():
            raise TrainingError(f"--work-dir {self.path} is a file; give a directory")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainingError(f"cannot create --work-dir {self.path}: {exc.strerror}") from None
        lock = FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise TrainingError(f"{self.path} is in use by another training run "
                                f"({self._holder()}): wait for it to end, or choose another "
                                "--work-dir") from None
        self._lock = lock
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        write_text_atomic(self.holder_file, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n")

    def _holder(self) -> str:
        try:
            info = json.loads(self.holder_file.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not recorded itself yet"

    def unlock(self) -> None:
        """Release the lock; a work dir this run created and left empty is removed."""
        if self._lock is None:
            return
        self.holder_file.unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        if self._created and {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()

    # -- what the dir holds --------------------------------------------------------------------

    def checkpoints(self) -> list[SavedCheckpoint]:
        """The complete checkpoints, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for folder in self.checkpoints_dir.iterdir():
            number = folder.name.removeprefix(_PREFIX)
            if folder.is_dir() and folder.name.startswith(_PREFIX) and number.isdigit():
                found.append(SavedCheckpoint(folder, int(number)))
        return sorted(found, key=lambda c: c.iteration)

    def partial_checkpoints(self) -> list[Path]:
        """Temporary folders of saves that did not finish (a kill, a full disk)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.iterdir()
                      if p.name.startswith(f".{_PREFIX}") and p.name.endswith(".tmp"))

    def remove_partial_checkpoints(self) -> None:
        for partial in self.partial_checkpoints():
            logger.warning("removing %s: a save that did not finish (the process was killed "
                           "or the disk was full)", partial)
            shutil.rmtree(partial, ignore_errors=True)

    def earlier_version_files(self) -> bool:
        """A work dir of vitadapter before the checkpoint folders (train_state.pt at the top)."""
        return (self.path / STATE_FILE).exists()

    def set_aside_unfinished(self) -> Path | None:
        """Move the files of a run that never completed a save (its log, a best.safetensors
        of an evaluation, ...) into ``unfinished-N/`` so that a fresh run starts clean;
        returns that folder (None when there was nothing)."""
        self.remove_partial_checkpoints()
        present = [self.path / name for name in RUN_FILES if (self.path / name).exists()]
        if not present:
            return None
        number = 1
        while (self.path / f"unfinished-{number}").exists():
            number += 1
        target = self.path / f"unfinished-{number}"
        target.mkdir()
        for path in present:
            os.replace(path, target / path.name)
        logger.warning("%s held the files of a run that never saved a checkpoint (%s): moved "
                       "them to %s", self.path, ", ".join(p.name for p in present), target)
        return target

    # -- writing -------------------------------------------------------------------------------

    def save_checkpoint(self, iteration: int, tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, str], state: dict[str, Any],
                        config: Mapping[str, Any], keep: int) -> SavedCheckpoint:
        """Write checkpoint ``iteration`` as one unit (``state`` gets the weights' SHA-256),
        then config.json, ``last_checkpoint`` and latest.safetensors; keep the newest
        ``keep`` checkpoints."""
        saved = SavedCheckpoint(self.checkpoints_dir / checkpoint_name(iteration), iteration)
        if saved.path.exists():  # complete already: never replaced
            return saved
        with _disk_full_is_an_error(saved.path, self.checkpoints()):
            with atomic_dir(saved.path) as tmp:
                save_safetensors(tensors, tmp / WEIGHTS, metadata)
                state = {**state, "weights_sha256": sha256_of(tmp / WEIGHTS)}
                with open(tmp / STATE_FILE, "wb") as file:  # torch's zip writer then raises
                    torch.save(state, file)                 # our OSError (disk full)
            self.write_json(CONFIG_FILE, config)
            self.point_to(saved)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        return saved

    def pointer(self) -> str | None:
        """The checkpoint ``last_checkpoint`` names (None without one)."""
        try:
            return (self.path / POINTER).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def point_to(self, saved: SavedCheckpoint) -> None:
        """``last_checkpoint`` and latest.safetensors for ``saved``."""
        write_text_atomic(self.path / POINTER, saved.path.name + "\n")
        self._link_latest(saved.weights)

    def _link_latest(self, weights: Path) -> None:
        latest = self.path / LATEST
        with atomic_path(latest) as tmp:
            tmp.unlink()
            try:
                os.link(weights, tmp)
            except OSError:  # no hard links here (some network or FAT file systems)
                shutil.copyfile(weights, tmp)

    def save_best(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                  config: Mapping[str, Any]) -> None:
        path = self.path / BEST
        with _disk_full_is_an_error(path, self.checkpoints()):
            save_safetensors(tensors, path, metadata)
            self.write_json(CONFIG_FILE, config)

    def write_json(self, name: str, value: Mapping[str, Any]) -> None:
        write_text_atomic(self.path / name, json.dumps(value, indent=1) + "\n")

    # -- reading a checkpoint ------------------------------------------------------------------

    def read_state(self, saved: SavedCheckpoint) -> dict[str, Any]:
        """The training state of ``saved`` (tensors and plain data only), its weights checked
        against the checksum it records."""
        path = saved.state
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file of any kind: say why
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if path.exists() and path.stat().st_size == 0:
                reason = "the file is empty"
            raise TrainingError(f"{path} is not a readable training state ({reason}): "
                                + self._fallback(saved)) from None
        if not isinstance(state, dict):
            raise TrainingError(f"{path} holds a {type(state).__name__}, not a training state: "
                                + self._fallback(saved))
        recorded = state.get("weights_sha256")
        if not saved.weights.is_file():
            raise TrainingError(f"{saved.weights} is missing: " + self._fallback(saved))
        if recorded != sha256_of(saved.weights):
            raise TrainingError(f"{saved.weights} does not match the SHA-256 its "
                                f"{STATE_FILE} records: the weights were damaged or edited "
                                "after they were saved; " + self._fallback(saved))
        return state

    def _fallback(self, saved: SavedCheckpoint) -> str:
        older = [c for c in self.checkpoints() if c.iteration < saved.iteration]
        if older:
            return (f"remove {saved.path} to resume from {older[-1].path.name}, or start "
                    "another --work-dir")
        return "start another --work-dir (--init can take its weights)"

    # -- the log -------------------------------------------------------------------------------

    def append_log(self, record: Mapping[str, Any]) -> None:
        path = self.path / LOG_FILE
        with _disk_full_is_an_error(path, self.checkpoints()), \
                open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        """The records of log.jsonl; lines that are not JSON objects with an integer
        ``iter`` (hand edits, a torn last line) are left out with a warning."""
        return read_log(self.path / LOG_FILE)

    def truncate_log(self, iteration: int) -> None:
        """Keep the records up to ``iteration`` (an interrupted run's tail goes)."""
        path = self.path / LOG_FILE
        if not path.exists():
            return
        kept = [r for r in self.read_log() if r["iter"] <= iteration]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def plot(self) -> Path | None:
        """curves.png from the log (None without matplotlib or records)."""
        from .curves import plot_curves

        with _disk_full_is_an_error(self.path / CURVES, self.checkpoints()):
            return plot_curves(self.read_log(), self.path / CURVES)


def read_log(path: Path) -> list[dict[str, Any]]:
    """See :meth:`WorkDir.read_log`."""
    if not path.exists():
        return []
    records, skipped = [], 0
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            record = None
        if (isinstance(record, dict) and type(record.get("iter")) is int
                and record["iter"] >= 0):
            records.append(record)
        elif line.strip():
            skipped += 1
    if skipped:
        logger.warning("%s: left out %d line(s) that are not JSON objects with an integer "
                       "'iter' (edited or damaged)", path, skipped)
    return records


@contextlib.contextmanager
def _disk_full_is_an_error(path: Path, complete: list[SavedCheckpoint]) -> Iterator[None]:
    """A full disk or file-size limit while writing ``path`` as a :class:`TrainingError`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        cause: BaseException | None = exc
        while cause is not None and not (isinstance(cause, OSError)
                                         and cause.errno in _DISK_FULL):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        kept = (f"the work dir keeps its last complete checkpoint, {complete[-1].path.name}"
                if complete else "nothing was saved yet")
        raise TrainingError(f"disk full while writing {path} ({os.strerror(cause.errno or 0)}): "
                            f"{kept}; free space (or raise the file-size limit) and --resume"
                            ) from None

"""Resuming: the training state's fields checked before any is used, and what a resumed run
must repeat (its settings, model, processes and data) compared with what the state recorded,
every difference listed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import EvalDataset
from ..errors import TrainingError

STATE_VERSION = 3
# The training state's fields and their types (checked before a resume uses any of them).
_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int, "iteration": int, "iters": int, "settings": dict, "model_config": dict,
    "dataset": dict, "optimizer": dict, "best_miou": float, "world_size": int,
    "torch_rng": list, "cuda_rng": list, "scaler": (dict, type(None)), "data_order": dict,
    "weights_sha256": str, "backbone_sha256": (str, type(None)),
}
_DATASET_FIELDS: dict[str, type] = {"images": int, "files_sha256": str, "classes": list}


def dataset_identity(split: EvalDataset) -> dict[str, Any]:
    """The training split as the batches depend on it: its image count, a SHA-256 of its
    image and annotation names (relative to the data root, in order) and its class list."""
    digest = hashlib.sha256()
    for sample in split.samples:
        for path in (sample.image, sample.label):
            digest.update(path.relative_to(split.root).as_posix().encode() + b"\n")
    return {"images": len(split.samples), "files_sha256": digest.hexdigest(),
            "classes": list(split.class_names)}


def resume_differences(state: dict[str, Any], *, settings: dict[str, Any],
                       model_config: dict[str, Any], world_size: int,
                       dataset: dict[str, Any]) -> list[str]:
    """Every way the run asked for now differs from the one ``state`` belongs to."""
    found = []
    theirs = state["model_config"]
    if theirs != model_config:
        keys = sorted(k for k in set(theirs) | set(model_config)
                      if theirs.get(k) != model_config.get(k))
        found.append(f"model: {theirs.get('name')} in the work dir differs from the one asked "
                     f"for now (in {', '.join(keys)})")
    if state["world_size"] != world_size:
        found.append(f"processes: {state['world_size']} in the work dir, {world_size} now "
                     "(the batches depend on it)")
    saved = state["dataset"]
    if saved["classes"] != dataset["classes"]:
        found.append(f"classes: {saved['classes']} in the work dir, {dataset['classes']} now")
    if saved["images"] != dataset["images"]:
        found.append(f"training images: {saved['images']} in the work dir, "
                     f"{dataset['images']} now")
    elif saved["files_sha256"] != dataset["files_sha256"]:
        found.append(f"training images: the same count ({dataset['images']}) but other file "
                     "names (images or annotations renamed, added and removed)")
    old = state["settings"]
    found += [f"{k}: {old.get(k)!r} in the work dir, {settings.get(k)!r} now"
              for k in sorted(set(settings) | set(old)) if settings.get(k) != old.get(k)]
    return found


def check_state(state: dict[str, Any], path: Path) -> None:
    """Every field of a training state present with its type, before any is used."""
    def kind(value: Any) -> str:
        return type(value).__name__

    if state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path} was written by another version of the trainer (state "
                            f"version {state.get('version')!r}, this one reads {STATE_VERSION})")
    problems = []
    for key, expected in _STATE_FIELDS.items():
        if key not in state:
            problems.append(f"no {key!r}")
        elif isinstance(state[key], bool) or not isinstance(state[key], expected):
            problems.append(f"{key!r} is a {kind(state[key])}")
    if not problems:
        dataset = state["dataset"]
        problems += [f"'dataset.{k}' is missing or a {kind(dataset.get(k))}"
                     for k, t in _DATASET_FIELDS.items() if not isinstance(dataset.get(k), t)]
        world = state["world_size"]
        if state["iteration"] < 0 or world < 1:
            problems.append(f"iteration {state['iteration']}, world_size {world}")
        for key in ("torch_rng", "cuda_rng"):
            if len(state[key]) != world or not all(
                    v is None or (isinstance(v, torch.Tensor) and v.dtype == torch.uint8)
                    for v in state[key]):
                problems.append(f"{key!r} is not {world} byte tensor(s)")
    if problems:
        raise TrainingError(f"{path} is not a training state of this trainer "
                            f"({'; '.join(problems)}): the file was edited or damaged")


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every tensor of a loaded optimizer state shaped as its parameter (ValueError)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if (isinstance(value, torch.Tensor) and value.dim()
                        and value.shape != param.shape):
                    raise ValueError(f"optimizer {name} of shape {tuple(value.shape)} for a "
                                     f"parameter of shape {tuple(param.shape)}")

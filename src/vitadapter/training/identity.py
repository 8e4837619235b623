"""What a resumed run must repeat: its settings, model, processes and data, compared with what
the checkpoint's state recorded, every difference listed."""

from __future__ import annotations

import hashlib
from typing import Any

from ..data.datasets import EvalDataset


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

"""One training run's settings (:class:`TrainSettings`): the official recipe as defaults, each
option's help text beside it (``vitadapter train --help`` is generated from them). Torch-free,
like the rest of :mod:`vitadapter.config`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ITERS = 80000
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")


def option(default: Any, help: str) -> Any:
    """A field that is also a ``train`` option: ``help`` is its --help text, without the
    default (added from ``default``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainSettings:
    """One training run. ``model`` is a preset name or config path; ``None`` fields take the
    model's values (crop: its inference crop; img_scale: its test img_scale) or, for
    ``iters``, 80000 (a resumed run: its own)."""

    data_root: Path
    dataset: str
    work_dir: Path
    model: str = "cocostuff164k-beit-adapter-l-m2f-896"
    init: str | None = None
    iters: int | None = option(None, f"training iterations (default {DEFAULT_ITERS}, as the "
                                     "896 recipes; with --resume: the run's own, a larger "
                                     "value extends a finished run)")
    batch_size: int = option(2, "images per process and step")
    crop: int | None = None
    img_scale: tuple[int, int] | None = None
    lr: float = option(2e-5, "base learning rate")
    weight_decay: float = option(0.05, "AdamW weight decay")
    layer_decay: float = option(0.9, "layer-wise lr decay rate")
    warmup_iters: int = option(1500, "linear warm-up iterations")
    warmup_ratio: float = 1e-6
    drop_path: float = option(0.3, "stochastic depth rate of the backbone")
    num_points: int = option(12544, "points of the mask losses and the matcher (Mask2Former)")
    eval_interval: int = option(8000, "evaluate on the val split every N iterations and at "
                                      "the end (0: never)")
    save_interval: int = option(1000, "save a checkpoint every N iterations and at the end")
    keep_checkpoints: int = option(2, "complete checkpoints kept in WORK_DIR/checkpoints "
                                      "(older ones are removed after each save)")
    log_interval: int = option(50, "log every N iterations")
    seed: int = option(0, "seed of the initialisation, data order, augmentation and points")
    device: str | None = None
    num_workers: int = option(2, "data loading processes")
    resume: bool = False
    trust_checkpoint: bool = False
    # fp32, or autocast of the model's forward to bf16 / fp16 (with a gradient scaler).
    precision: str = "fp32"
    # Gradient checkpointing of the ViT blocks and adapter interactions; None: on for the
    # large models (embed_dim >= 1024), as the official configs.
    with_cp: bool | None = None
    # Progress bars on stderr (over the iterations and each in-training evaluation).
    progress: bool = True
    # Settings that may differ between a run and its resumption (iters: see above).
    RESUMABLE: tuple[str, ...] = field(default=(
        "work_dir", "init", "iters", "eval_interval", "save_interval", "keep_checkpoints",
        "log_interval", "device", "num_workers", "resume", "trust_checkpoint", "with_cp",
        "progress"), repr=False)

    def run_identity(self) -> dict[str, Any]:
        """The settings that define the run (what a resume must repeat)."""
        values = dataclasses.asdict(self)
        for key in (*self.RESUMABLE, "RESUMABLE"):
            values.pop(key)
        return json.loads(json.dumps(values, default=str))


def option_fields() -> list[dataclasses.Field[Any]]:
    """The fields that are plain ``train`` options, in order."""
    return [f for f in dataclasses.fields(TrainSettings) if "help" in f.metadata]

"""One training run's settings (:class:`TrainSettings`), each option's help text beside it
(``vitadapter train --help`` is generated from them), and the families' recipes
(:class:`TrainRecipe`) that the unset ones default to. Torch-free, like the rest of
:mod:`vitadapter.config`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
BACKBONE_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainRecipe:
    """What a family's fine-tuning defaults to where ``TrainSettings`` leaves a field None."""

    iters: int
    lr: float
    layer_decay: float
    drop_path: float
    freeze_backbone: bool


# The official ViT-Adapter recipe (the released 896 configs): the whole model trained, AdamW
# 2e-5 with layer-wise decay 0.9, 80k iterations.
OFFICIAL_RECIPE = TrainRecipe(iters=80000, lr=2e-5, layer_decay=0.9, drop_path=0.3,
                              freeze_backbone=False)
# This project's DINOv3 recipe (Meta released no training code for its adapter and head): the
# ViT frozen as in Meta's DINOv3_Adapter, the adapter and head trained from scratch with
# Mask2Former's AdamW lr 1e-4, for the 40k iterations of Meta's released ADE20K segmentation
# training config (batch 2 x 8 GPUs, 1500 warm-up iterations, 512 crops, ratio 0.5-2.0); drop
# path 0.3 in the extractors (Meta's adapter default); layer decay 0.9 when the ViT is unfrozen.
DINOV3_RECIPE = TrainRecipe(iters=40000, lr=1e-4, layer_decay=0.9, drop_path=0.3,
                            freeze_backbone=True)


def recipe_for(backbone_kind: str, settings: TrainSettings | None = None) -> TrainRecipe:
    """The family's recipe, with the values ``settings`` sets (not ``iters``, which a resumed
    run takes from its state)."""
    recipe = DINOV3_RECIPE if backbone_kind == "dinov3" else OFFICIAL_RECIPE
    if settings is None:
        return recipe
    given = {name: getattr(settings, name)
             for name in ("lr", "layer_decay", "drop_path", "freeze_backbone")
             if getattr(settings, name) is not None}
    return dataclasses.replace(recipe, **given)


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A field that is also a ``train`` option: ``help`` is its --help text, without the
    default (added from ``default``; None: the model's recipe, said in ``help``)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class TrainSettings:
    """One training run. ``model`` is a preset name or config path; ``None`` fields take the
    model's values (crop: its inference crop; img_scale: its test img_scale) or its family's
    :class:`TrainRecipe` (:meth:`with_recipe`; ``iters`` of a resumed run: its own)."""

    data_root: Path
    dataset: str
    work_dir: Path
    model: str = "cocostuff164k-beit-adapter-l-m2f-896"
    init: str | None = None
    iters: int | None = option(None, "training iterations (default: the model's recipe, "
                                     f"{OFFICIAL_RECIPE.iters} official, "
                                     f"{DINOV3_RECIPE.iters} DINOv3; with --resume: the "
                                     "run's own, a larger value extends a finished run)")
    batch_size: int = option(2, "images per process and step")
    crop: int | None = None
    img_scale: tuple[int, int] | None = None
    lr: float | None = option(None, "base learning rate (default: the model's recipe, "
                                    f"{OFFICIAL_RECIPE.lr:g} official, {DINOV3_RECIPE.lr:g} "
                                    "DINOv3)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    layer_decay: float | None = option(None, "layer-wise lr decay rate of the ViT's blocks "
                                             f"(default {OFFICIAL_RECIPE.layer_decay})")
    warmup_iters: int = option(1500, "linear warm-up iterations")
    warmup_ratio: float = 1e-6
    drop_path: float | None = option(None, "stochastic depth rate of the ViT's blocks and "
                                           "the adapter's extractors (default "
                                           f"{OFFICIAL_RECIPE.drop_path})")
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
    # torch.compile of the backbone and the decode head (compiled code cached on disk).
    compile: bool = False
    backbone_checkpoint: str | None = option(
        None, "the ViT's starting weights as a file of their own: Meta's "
              "dinov3_*_pretrain_*.pth or transformers' DINOv3 safetensors (read again on "
              "--resume when the ViT is frozen, checked by its SHA-256)")
    freeze_backbone: bool | None = option(
        None, "train the adapter and head with the ViT frozen: eval mode, no gradients, not "
              "written into the checkpoints (default: the model's recipe, frozen for DINOv3, "
              "trained for the official families); --no-freeze-backbone trains it with "
              "layer-wise lr decay")
    save_backbone: bool = option(False, "also write a frozen ViT's weights into every "
                                        "checkpoint (default: only the trained tensors)")
    backbone_precision: str = option("fp32", "dtype of a frozen ViT's weights and compute "
                                             "(bf16 halves its memory; GPUs and CPUs with "
                                             "native bf16)", choices=BACKBONE_PRECISIONS)
    # Settings that may differ between a run and its resumption (iters: see above).
    RESUMABLE: tuple[str, ...] = field(default=(
        "work_dir", "init", "iters", "eval_interval", "save_interval", "keep_checkpoints",
        "log_interval", "device", "num_workers", "resume", "trust_checkpoint", "with_cp",
        "progress", "backbone_checkpoint", "compile"), repr=False)

    def run_identity(self) -> dict[str, Any]:
        """The settings that define the run (what a resume must repeat)."""
        values = dataclasses.asdict(self)
        for key in (*self.RESUMABLE, "RESUMABLE"):
            values.pop(key)
        return json.loads(json.dumps(values, default=str))


def option_fields() -> list[dataclasses.Field[Any]]:
    """The fields that are plain ``train`` options, in order."""
    return [f for f in dataclasses.fields(TrainSettings) if "help" in f.metadata]


def option_type(f: dataclasses.Field[Any]) -> type:
    """The value type of an option field (its annotation without ``| None``)."""
    name = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool, "str": str}[name]

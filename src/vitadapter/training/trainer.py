"""Fine-tuning with the official recipe, resumable, into a work directory.

The work dir (:mod:`.work_dir`) holds ``config.json`` (the model as trained, readable by
``segment --config``), one folder per saved iteration under ``checkpoints/`` (the trainable
tensors and ``train_state.pt``: optimizer, iteration, RNG states, the run's settings and data;
``torch.load(weights_only=True)``), ``latest.safetensors`` and ``best.safetensors`` (best val
mIoU) for ``segment``, ``log.jsonl`` (one record per logged iteration, one per evaluation, mIoU
in percent) and ``curves.png`` (with matplotlib). One run at a time holds it (a file lock).

Under ``torchrun`` every process trains its shard of each global batch (see
:mod:`vitadapter.data.train`) with DistributedDataParallel and batch norms over all processes;
rank 0 alone logs and writes the work dir, and every rank resumes from the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import resource
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..backends.compile import compile_in_place
from ..backends.precision import cpu_has_fast_bf16
from ..config.schema import ModelConfig, UperNetConfig
from ..config.training import (
    BACKBONE_PRECISIONS,
    TRAIN_PRECISIONS,
    TrainSettings,
    recipe_for,
)
from ..data.custom import CustomLayout
from ..data.datasets import EvalDataset
from ..data.train import TrainDataset, batch_keys, open_split, train_loader
from ..data.transforms import TrainPipelineConfig
from ..distributed import gather_objects, join_processes, mean_over_processes
from ..errors import ConfigError, DatasetError, TrainingError
from ..files import sha256_of
from ..modeling.build import build_model, resolve_config
from ..modeling.segmentor import SegmentationModel, checkpoint_filter
from ..pipeline.classes import DATASETS, generated_palette
from ..progress import Progress
from ..weights.checkpoint import apply_state_dict, read_backbone_checkpoint
from ..weights.safetensors import load_safetensors
from .criterion import Criterion, criterion_for
from .distributed import sync_batchnorms
from .init import initialize
from .param_groups import layer_decay_param_groups
from .point_sampling import SamplePoints
from .resume import (
    STATE_VERSION,
    check_optimizer_state,
    check_state,
    dataset_identity,
    resume_differences,
)
from .schedule import PolySchedule, PolyScheduleConfig, lr_at
from .work_dir import LATEST, POINTER, SavedCheckpoint, WorkDir

__all__ = ["TRAIN_PRECISIONS", "TrainSettings", "Trainer", "train", "training_config"]

logger = logging.getLogger(__name__)

@dataclass
class ClassInfo:
    names: list[str]
    palette: list[list[int]]


def class_info(dataset: EvalDataset) -> ClassInfo:
    names = list(dataset.class_names)
    layout = dataset.layout
    if isinstance(layout, CustomLayout) and layout.palette is not None:
        palette = [list(c) for c in layout.palette]
    elif layout.classes in DATASETS:
        palette = [list(c) for c in DATASETS[layout.classes].palette]
    else:
        palette = [list(c) for c in generated_palette(len(names))]
    return ClassInfo(names, palette)


def training_config(base: ModelConfig, settings: TrainSettings, num_classes: int,
                    dataset_name: str, drop_path: float) -> ModelConfig:
    """The model as trained: the class count of the data, the crop (default: the model's
    inference crop), the slide stride scaled with it, the drop path rate."""
    model_crop = base.inference.crop_size[0]
    crop = settings.crop or model_crop
    if crop < 32 or crop % 32:
        raise ConfigError(f"--crop {crop}: the model needs a multiple of 32 (patch 16 and a "
                          "1/32 feature level)")
    img_scale = settings.img_scale or base.inference.img_scale
    largest = int(min(img_scale) * 2.0)
    if crop > largest:
        raise ConfigError(f"--crop {crop} is larger than the model supports with img_scale "
                          f"{tuple(img_scale)}: resized images are at most {largest}px on the "
                          "short side (2.0 x the scale); lower --crop or raise --img-scale")
    if num_classes != base.num_classes:
        base = base.with_num_classes(num_classes)
    stride = min(crop, max(1, round(base.inference.stride[0] * crop / model_crop)))
    return base.replace(
        name=f"{base.name}-finetuned" if not base.name.endswith("-finetuned") else base.name,
        dataset=dataset_name,
        # A plain ViT's img_size is its position grid's pretraining size (resized to any
        # input); BEiT's relative position tables are sized for the crop.
        backbone=dataclasses.replace(
            base.backbone, img_size=crop if base.backbone.kind == "beit" else
            base.backbone.img_size, drop_path_rate=drop_path),
        inference=dataclasses.replace(
            base.inference, img_scale=(int(img_scale[0]), int(img_scale[1])),
            crop_size=(crop, crop), stride=(stride, stride),
            # Meta's test pipeline resizes the short side to its crop (img_size = crop_size).
            short_side=crop if base.inference.pipeline == "dinov3" else None),
        weights_url=None, weights_sha256=None, backbone_weights_url=None, weights_access=None,
        description=f"fine-tuned on {dataset_name}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device`` (None: fp32); refuses what the
    device cannot do."""
    if precision not in TRAIN_PRECISIONS:
        raise TrainingError(f"--precision {precision}: choose one of "
                            f"{', '.join(TRAIN_PRECISIONS)}")
    if precision == "fp16":
        if device.type != "cuda":
            raise TrainingError("--precision fp16 needs a CUDA device (fp16 with a gradient "
                                "scaler); on CPU use bf16 or fp32")
        return torch.float16
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("--precision bf16: this GPU has no bf16; use fp16 or fp32")
        if device.type == "cpu" and not cpu_has_fast_bf16():
            logger.warning("--precision bf16: this CPU has no native bf16 (AMX), so bf16 "
                           "autocast runs emulated and slower than fp32")
        return torch.bfloat16
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated on the GPU (CUDA), else peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def loss_summary(losses: Mapping[str, float]) -> str:
    """The model's own loss terms for the console, each summed over the decoder layers
    (Mask2Former: ``cls mask dice``; UperNet: ``ce aux.ce``)."""
    terms: dict[str, float] = {}
    for key, value in losses.items():
        name = ".".join(p for p in key.split(".") if not re.fullmatch(r"d\d+", p))
        name = name.removeprefix("decode.").replace("loss_", "")
        terms[name] = terms.get(name, 0.0) + value
    return " ".join(f"{name} {value:.3f}" for name, value in terms.items())


class LossModule(nn.Module):
    """The model and its criterion as one module: DistributedDataParallel wraps the forward
    whose loss is differentiated."""

    def __init__(self, model: SegmentationModel, criterion: Criterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.criterion(self.model, images, labels)


class Trainer:
    """Builds everything a run needs from :class:`TrainSettings` and holds the work dir until
    :meth:`close` (a context manager); :meth:`run` trains."""

    def __init__(self, settings: TrainSettings) -> None:
        self.settings = s = settings
        for name in ("batch_size", "log_interval", "save_interval", "keep_checkpoints"):
            if getattr(s, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
        if s.iters is not None and s.iters < 1:
            raise TrainingError("--iters must be at least 1")
        self.work = WorkDir(Path(s.work_dir))
        self.work_dir = self.work.path
        self.train_data = open_split(s.data_root, s.dataset, "train")
        self.val_data = self._val_split()
        self.classes = class_info(self.train_data)
        self.data_identity = dataset_identity(self.train_data)
        base = resolve_config(s.model)
        self.recipe = recipe = recipe_for(base.backbone.kind, s)
        if s.backbone_precision not in BACKBONE_PRECISIONS or (
                s.backbone_precision != "fp32" and not recipe.freeze_backbone):
            raise TrainingError(f"--backbone-precision {s.backbone_precision}: one of "
                                f"{', '.join(BACKBONE_PRECISIONS)}, and other than fp32 only "
                                "for a frozen backbone (--freeze-backbone)")
        dataset_name = (self.train_data.layout.classes if self.train_data.layout.name != "custom"
                        else "custom")
        self.config = training_config(base, s, len(self.classes.names), dataset_name,
                                      drop_path=recipe.drop_path)
        self.shard, self.device = join_processes(s.device)
        self.rank, self.world_size = self.shard.rank, self.shard.world_size
        if isinstance(self.config.head, UperNetConfig) and s.batch_size * self.world_size < 2:
            raise TrainingError("--batch-size 1 in one process: UperNet's pyramid pooling "
                                "normalises a 1x1 map over the batch, which needs at least 2 "
                                "images per step (batch size x processes)")
        dtype = autocast_dtype(s.precision, self.device)
        if self.shard.is_main:
            self.work.lock()
        try:
            self._build(dtype)
        except BaseException:
            self.close()
            raise

    def _build(self, dtype: torch.dtype | None) -> None:
        s = self.settings
        saved = self._open_work_dir()
        self.iters = self._planned_iters(saved[1] if saved else None)
        torch.manual_seed(s.seed)
        self.model: SegmentationModel = build_model(self.config, device=self.device)
        self.model.classes, self.model.palette = self.classes.names, self.classes.palette
        self.backbone_sha256: str | None = None
        if self.recipe.freeze_backbone and saved is None and not (s.init or
                                                                  s.backbone_checkpoint):
            raise TrainingError("the ViT is frozen (the recipe of this model): give its weights "
                                "with --backbone-checkpoint (or --init), or train it too with "
                                "--no-freeze-backbone")
        if self.recipe.freeze_backbone:
            self.model.backbone.freeze_vit(torch.bfloat16 if s.backbone_precision == "bf16"
                                           else None)
        whole, _ = checkpoint_filter(self.model.state_dict(), "model")
        left_out = saved is not None and whole.keys() != self.checkpoint_tensors().keys()
        if saved is None or left_out:
            # A fresh run, or a resumed one whose checkpoints leave tensors out (frozen).
            if left_out and not (s.init or s.backbone_checkpoint):
                raise TrainingError("the checkpoints of this run hold the trained tensors only: "
                                    "pass the --backbone-checkpoint (or --init) it started "
                                    "from for the others")
            if s.init:
                initialize(self.model, s.init, trust_checkpoint=s.trust_checkpoint)
            if s.backbone_checkpoint:
                self._load_backbone(s.backbone_checkpoint)
                theirs = saved[1]["backbone_sha256"] if saved is not None else None
                if theirs and theirs != self.backbone_sha256:
                    raise TrainingError(f"--backbone-checkpoint {s.backbone_checkpoint} is not "
                                        f"the file this run started from (SHA-256 {theirs}): "
                                        "pass that file")
            elif not s.init:
                logger.warning("no --init or --backbone-checkpoint: training from random "
                               "weights")
        if self.world_size > 1:
            sync_batchnorms(self.model, self.device)
        large = self.config.backbone.embed_dim >= 1024
        self.with_cp = s.with_cp if s.with_cp is not None else large
        self.model.set_grad_checkpointing(self.with_cp)
        if s.compile:
            for part in (self.model.backbone, self.model.decode_head):
                compile_in_place(part)
        # Per-rank stream for drop path (the model above is the same on every rank).
        torch.manual_seed(s.seed + 1_000_003 * self.rank)
        self.points = SamplePoints(s.seed)
        self.criterion = criterion_for(
            self.model, self.points, s.num_points,
            autocast=(lambda: torch.autocast(self.device.type, dtype)) if dtype else
            contextlib.nullcontext)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        lr = self.recipe.lr
        groups = layer_decay_param_groups(self.model, lr, s.weight_decay,
                                          self.recipe.layer_decay, self.config.backbone.depth)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999),
                                           weight_decay=s.weight_decay)
        self.schedule = PolySchedule(PolyScheduleConfig(
            max_iters=self.iters, warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio))
        self.pipeline = TrainPipelineConfig(img_scale=self.config.inference.img_scale,
                                            crop=self.config.inference.crop_size[0])
        self.dataset = TrainDataset(self.train_data, self.pipeline, self.config.inference,
                                    s.seed)
        self.iteration = 0
        self.best_miou = -1.0
        self._stop_requested = False
        if saved is not None:
            self._restore(*saved)
        self._warn_short_warmup()
        self.loss_module: nn.Module = LossModule(self.model, self.criterion)
        if self.world_size > 1:
            self.loss_module = DistributedDataParallel(
                self.loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        """Release the work dir (the process group stays: :func:`train` leaves it)."""
        self.work.unlock()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------------

    def _val_split(self) -> EvalDataset | None:
        try:
            return open_split(self.settings.data_root, self.settings.dataset, "val")
        except DatasetError as exc:
            if self.settings.eval_interval > 0:
                logger.warning("no evaluation: %s", exc)
            return None

    def _open_work_dir(self) -> tuple[SavedCheckpoint, dict[str, Any]] | None:
        """The checkpoint and state to resume from (None: a fresh run, the work dir cleared of
        an unfinished run's files); refuses what cannot be resumed or overwritten."""
        work, resume = self.work, self.settings.resume
        if work.earlier_version_files():
            raise TrainingError(
                f"{self.work_dir} holds a run of an earlier vitadapter (train_state.pt beside "
                "latest.safetensors), which this version cannot resume: start another "
                f"--work-dir, with --init {self.work_dir / LATEST} to begin from its weights")
        complete = work.checkpoints()
        if not resume:
            if complete:
                raise TrainingError(f"{self.work_dir} already holds a training run (saved up "
                                    f"to iteration {complete[-1].iteration}); pass --resume "
                                    "to continue it, or choose another --work-dir")
            if self.shard.is_main:
                work.set_aside_unfinished()
            return None
        if not complete:
            partial = work.partial_checkpoints()
            raise TrainingError(f"nothing to resume: {self.work_dir} holds no complete "
                                "checkpoint" + (f" (only {partial[-1]}, a save that did not "
                                                "finish)" if partial else ""))
        latest = complete[-1]
        if self.shard.is_main:
            work.remove_partial_checkpoints()
            if work.pointer() != latest.path.name:  # a save stopped before updating them
                logger.warning("%s names %s, but %s is complete and newer: resuming from it "
                               "(last_checkpoint and latest.safetensors updated)", POINTER,
                               work.pointer(), latest.path.name)
                work.point_to(latest)
        state = work.read_state(latest)
        check_state(state, latest.state)
        differences = resume_differences(
            state, settings=self.settings.run_identity(),
            model_config=json.loads(json.dumps(self.config.to_dict())),
            world_size=self.world_size, dataset=self.data_identity)
        if differences:
            raise TrainingError(f"cannot resume {self.work_dir}: it holds a run with other "
                                "settings (" + "; ".join(differences) + "); resume with the "
                                "same settings, or start another --work-dir")
        return latest, state

    def _planned_iters(self, state: dict[str, Any] | None) -> int:
        """``--iters``, or the resumed run's; a resumed run may be extended (or shortened to
        no less than it has done), its schedule recomputed."""
        asked = self.settings.iters
        if state is None:
            return asked or self.recipe.iters
        done, planned = state["iteration"], state["iters"]
        if asked is None or asked == planned:
            return planned
        if asked < done:
            raise TrainingError(f"--iters {asked} is less than the {done} iterations the run "
                                f"in {self.work_dir} has done: give at least {done}")
        s = self.settings
        before = lr_at(done, self.recipe.lr, planned, warmup_iters=s.warmup_iters,
                       warmup_ratio=s.warmup_ratio)
        after = lr_at(done, self.recipe.lr, asked, warmup_iters=s.warmup_iters,
                      warmup_ratio=s.warmup_ratio)
        logger.warning("--iters %d: the run was planned for %d iterations; the poly schedule "
                       "is recomputed for %d (base lr at iteration %d: %.3g, was %.3g)",
                       asked, planned, asked, done, after, before)
        return asked

    def _warn_short_warmup(self) -> None:
        s = self.settings
        if self.iters >= s.warmup_iters or self.iteration >= self.iters:
            return
        peak = max(lr_at(i, self.recipe.lr, self.iters, warmup_iters=s.warmup_iters,
                         warmup_ratio=s.warmup_ratio) for i in range(self.iters))
        logger.warning("--iters %d ends inside the %d warm-up iterations: the lr never reaches "
                       "--lr %.3g (it peaks at %.3g); pass --warmup-iters %d (a tenth of "
                       "--iters) or fewer for the whole schedule", self.iters, s.warmup_iters,
                       self.recipe.lr, peak, max(self.iters // 10, 0))

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds and a resume restores: every parameter and buffer the
        training changes (the derived relative position indices left out), without a frozen
        ViT's unless --save-backbone (a resume loads it from --backbone-checkpoint again)."""
        tensors, _ = checkpoint_filter(self.model.state_dict(), "model")
        if self.recipe.freeze_backbone and not self.settings.save_backbone:
            vit = {f"backbone.{name}" for name in self.model.backbone.vit_state_names()}
            tensors = {k: v for k, v in tensors.items() if k not in vit}
        return tensors

    def _load_backbone(self, path: str) -> None:
        """The ViT's weights from ``path`` (strict: every ViT tensor, nothing else)."""
        vit = read_backbone_checkpoint(path, self.config.backbone,
                                       trust_checkpoint=self.settings.trust_checkpoint)
        expected = {f"backbone.{name}" for name in self.model.backbone.vit_state_names()}
        missing = sorted(expected - vit.state_dict.keys())
        unexpected = sorted(vit.state_dict.keys() - expected)
        if missing or unexpected:
            raise TrainingError(f"--backbone-checkpoint {path} does not fit the model's "
                                f"{self.config.backbone.kind} ViT (missing: "
                                f"{', '.join(missing[:6]) or 'none'}; unexpected: "
                                f"{', '.join(unexpected[:6]) or 'none'}): pass the weights of "
                                "the ViT the model is built with")
        apply_state_dict(self.model, vit.state_dict, strict=False, source=vit.source)
        self.backbone_sha256 = sha256_of(Path(path))
        logger.info("backbone: %s (%d tensors)", vit.source, len(expected))

    def _restore(self, saved: SavedCheckpoint, state: dict[str, Any]) -> None:
        tensors, metadata = load_safetensors(saved.weights)
        expected = self.checkpoint_tensors()
        wrong = sorted([k for k in expected if k not in tensors]
                       + [k for k in tensors if k not in expected]
                       + [k for k in tensors if k in expected
                          and tensors[k].shape != expected[k].shape])
        if wrong or metadata.get("iteration") != str(state["iteration"]):
            raise TrainingError(f"{saved.weights} does not fit the model or its state "
                                f"(keys {', '.join(wrong[:5]) or 'fit'}; iteration "
                                f"{metadata.get('iteration')} vs {state['iteration']})")
        self.model.load_state_dict(tensors, strict=False)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            check_optimizer_state(self.optimizer)
            torch.set_rng_state(state["torch_rng"][self.rank])
            if self.device.type == "cuda" and state["cuda_rng"][self.rank] is not None:
                torch.cuda.set_rng_state(state["cuda_rng"][self.rank], self.device)
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise TrainingError(f"{saved.state}: its optimizer, RNG or scaler state does not "
                                f"fit this run ({reason}): the file was edited or damaged"
                                ) from None
        self.iteration = state["iteration"]
        self.best_miou = state["best_miou"]
        if self.shard.is_main:
            self.work.truncate_log(self.iteration)
        logger.info("resumed %s at iteration %d (%s)", self.work_dir, self.iteration,
                    saved.path.name)

    def _rng_states(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (torch.get_rng_state(),
                torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)

    def save(self, best: bool = False) -> None:
        """Save a checkpoint of this iteration (or best.safetensors); every process calls it
        (the RNG states of all are saved), rank 0 writes."""
        rng = gather_objects(self._rng_states()) if not best else []
        if not self.shard.is_main:
            if not best:  # the files are complete for every rank when save returns
                self.shard.barrier()
            return
        config = {**self.config.to_dict(), "classes": self.classes.names,
                  "palette": self.classes.palette}
        tensors = self.checkpoint_tensors()
        metadata = {"format": "vitadapter", "source": self.config.name,
                    "classes": json.dumps(self.classes.names),
                    "palette": json.dumps(self.classes.palette),
                    "iteration": str(self.iteration)}
        if best:
            self.work.save_best(tensors, metadata, config)
            return
        state = {
            "version": STATE_VERSION, "iteration": self.iteration, "iters": self.iters,
            "settings": self.settings.run_identity(),
            "model_config": json.loads(json.dumps(self.config.to_dict())),
            "dataset": self.data_identity,
            "optimizer": self.optimizer.state_dict(), "best_miou": float(self.best_miou),
            "world_size": self.world_size,
            "torch_rng": [cpu for cpu, _ in rng], "cuda_rng": [cuda for _, cuda in rng],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "backbone_sha256": self.backbone_sha256,
            "data_order": {"seed": self.settings.seed, "dataset_size": len(self.dataset),
                           "batch_size": self.settings.batch_size,
                           "next_batch": self.iteration},
        }
        self.work.save_checkpoint(self.iteration, tensors, metadata, state, config,
                                  keep=self.settings.keep_checkpoints)
        self.work.plot()
        self.shard.barrier()

    # -- loop ---------------------------------------------------------------------------------

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this process's batch of iteration ``self.iteration``;
        returns the loss terms and their total."""
        s = self.settings
        self.schedule.apply(self.optimizer, self.iteration)
        self.points.start_batch(batch_keys(s.seed, len(self.dataset), s.batch_size,
                                           self.iteration, self.rank, self.world_size))
        losses = self.loss_module(images.to(self.device), labels.to(self.device))
        total = sum(losses.values())
        assert isinstance(total, torch.Tensor)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(total.detach())
        if not math.isfinite(values["loss"]):
            raise TrainingError(f"the loss is {values['loss']} at iteration {self.iteration}: "
                                "lower --lr, or check the data")
        return values

    def run(self, until: int | None = None) -> None:
        """Train up to iteration ``until`` (default: the end), saving as configured. Ctrl-C
        (alone in the process) finishes the iteration under way, saves it and then stops
        with KeyboardInterrupt; a second Ctrl-C stops at once."""
        s = self.settings
        stop = min(until or self.iters, self.iters)
        self.model.train()
        loader = train_loader(self.dataset, s.batch_size, self.iteration, stop, s.num_workers,
                              self.rank, self.world_size)
        window: list[dict[str, float]] = []
        tick = time.monotonic()
        show = s.progress and self.shard.is_main
        with self._interrupt_after_step(), _bars_and_logs(show), \
                Progress(max(stop - self.iteration, 0), "train", enabled=show) as bar:
            for images, labels in loader:
                window.append(self.step(images, labels))
                bar.advance(note=f"loss {window[-1]['loss']:.4f}")
                done = self.iteration
                if done % s.log_interval == 0 or done == stop:
                    seconds = (time.monotonic() - tick) / len(window)
                    self._log(window, seconds)
                    window, tick = [], time.monotonic()
                if s.eval_interval > 0 and (done % s.eval_interval == 0 or done == self.iters):
                    self.evaluate()
                    tick = time.monotonic()
                if done % s.save_interval == 0 or done == stop or self._stop_requested:
                    self.save()
                if self._stop_requested:
                    logger.info("interrupted: saved iteration %d in %s", self.iteration,
                                self.work_dir)
                    raise KeyboardInterrupt

    @contextlib.contextmanager
    def _interrupt_after_step(self) -> Iterator[None]:
        """Defer Ctrl-C to the end of the iteration under way (one process, main thread)."""
        if self.world_size > 1 or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: object) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            logger.warning("interrupt: finishing iteration %d, then saving it (Ctrl-C again "
                           "to stop at once, keeping the last save)", self.iteration + 1)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _log(self, window: list[dict[str, float]], seconds: float) -> None:
        """One record for the window (loss terms averaged over it and over the processes)."""
        mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
        mean = mean_over_processes(mean, self.device)
        if not self.shard.is_main:
            return
        peak = peak_memory_mb(self.device)
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        eta = seconds * (self.iters - self.iteration)
        images = self.settings.batch_size * self.world_size
        record = {"iter": self.iteration, "loss": mean.pop("loss"), **mean, "lr": lr,
                  "s_per_iter": seconds, "eta_s": eta, "images_per_s": images / seconds,
                  "peak_mem_mb": peak,
                  "peak_mem_mb_per_image": peak / self.settings.batch_size}
        self.work.append_log(record)
        hours, rest = divmod(int(eta), 3600)
        logger.info("iter %d/%d  loss %.4f (%s)  lr %.3g  %.2f s/iter  ETA %d:%02d:%02d",
                    self.iteration, self.iters, record["loss"], loss_summary(mean), lr,
                    seconds, hours, rest // 60, rest % 60)

    def evaluate(self) -> float | None:
        """mIoU (percent) of the current weights on the val split (None without one); keeps
        the best in best.safetensors."""
        if self.val_data is None:
            return None
        from ..evaluation.loop import run_evaluation
        from ..segmenter import Segmenter

        segmenter = Segmenter.from_model(self.model)
        try:
            result = run_evaluation(lambda path: segmenter.segment(path).label_map,
                                    self.val_data, settings={},
                                    progress=self.settings.progress, shard=self.shard)
        finally:
            self.model.train()
        metrics = result.metrics
        miou = 100 * metrics.miou
        if not self.shard.is_main:
            self.best_miou = max(self.best_miou, miou)
            return miou
        record = {"iter": self.iteration, "mode": "val", "mIoU": miou,
                  "mAcc": 100 * metrics.macc, "aAcc": 100 * metrics.all_acc,
                  "images": result.images}
        self.work.append_log(record)
        logger.info("iter %d: val mIoU %.2f  mAcc %.2f  aAcc %.2f", self.iteration,
                    record["mIoU"], record["mAcc"], record["aAcc"])
        if miou > self.best_miou:
            self.best_miou = miou
            self.save(best=True)
        self.work.plot()
        return miou

    def plot(self) -> Path | None:
        """curves.png from log.jsonl (loss and mIoU); skipped without matplotlib."""
        return self.work.plot()


@contextlib.contextmanager
def _bars_and_logs(show: bool) -> Iterator[None]:
    """Log lines printed above the progress bars instead of through them."""
    if not show:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        yield


def train(settings: TrainSettings) -> Trainer:
    """Train as ``settings`` say (one process of several under ``torchrun``); returns the
    finished trainer, its work dir released."""
    trainer = Trainer(settings)
    try:
        trainer.run()
    finally:
        trainer.close()
        trainer.shard.close()
    return trainer

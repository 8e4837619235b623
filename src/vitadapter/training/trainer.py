"""Fine-tuning with the official recipe, resumable, into a work directory.

The work dir holds ``config.json`` (the model as trained, readable by ``segment --config``),
``latest.safetensors`` (weights + class names/palette), ``train_state.pt`` (optimizer, schedule,
iteration, RNG states, data order; ``torch.load(weights_only=True)``), ``log.jsonl`` (one record
per logged iteration, one per evaluation), ``best.safetensors`` (best val mIoU) and
``curves.png`` (with matplotlib). Every file is written to a temporary name, then renamed.

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
import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..backends.compile import compile_in_place
from ..backends.precision import cpu_has_fast_bf16
from ..config.schema import ModelConfig
from ..data.custom import CustomLayout
from ..data.datasets import EvalDataset
from ..data.train import TrainDataset, batch_keys, open_split, train_loader
from ..data.transforms import TrainPipelineConfig
from ..errors import ConfigError, DatasetError, TrainingError
from ..modeling.adapter import AdapterAttention
from ..modeling.backbones.beit import Block
from ..modeling.build import build_model, resolve_config
from ..modeling.segmentor import SegmentationModel, checkpoint_filter
from ..pipeline.classes import DATASETS, generated_palette
from ..weights.checkpoint import load_checkpoint
from ..weights.safetensors import save_safetensors
from .criterion import Criterion, criterion_for
from .distributed import gather_objects, join_processes, mean_over_processes, sync_batchnorms
from .init import initialize
from .param_groups import layer_decay_param_groups
from .point_sampling import SamplePoints
from .schedule import PolySchedule, PolyScheduleConfig

logger = logging.getLogger(__name__)

CONFIG_FILE, LATEST, BEST = "config.json", "latest.safetensors", "best.safetensors"
STATE_FILE, LOG_FILE, CURVES = "train_state.pt", "log.jsonl", "curves.png"
STATE_VERSION = 2
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainSettings:
    """One training run. ``model`` is a preset name or config path; ``None`` fields take the
    model's values (crop: its img_size; img_scale: its test img_scale) or the official recipe."""

    data_root: Path
    dataset: str
    work_dir: Path
    model: str = "cocostuff164k-beit-adapter-l-m2f-896"
    init: str | None = None
    iters: int = 80000
    batch_size: int = 2
    crop: int | None = None
    img_scale: tuple[int, int] | None = None
    lr: float = 2e-5
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    drop_path: float = 0.3
    num_points: int = 12544
    eval_interval: int = 8000
    save_interval: int = 1000
    log_interval: int = 50
    seed: int = 0
    device: str | None = None
    num_workers: int = 2
    resume: bool = False
    trust_checkpoint: bool = False
    # fp32, or autocast of the model's forward to bf16 / fp16 (with a gradient scaler).
    precision: str = "fp32"
    # Gradient checkpointing of the ViT blocks and adapter interactions; None: on for the
    # large models (embed_dim >= 1024), as the official configs.
    with_cp: bool | None = None
    # torch.compile of the backbone and the decode head (compiled code cached on disk).
    compile: bool = False
    # Settings that may differ between a run and its resumption.
    RESUMABLE: tuple[str, ...] = field(default=("work_dir", "init", "eval_interval",
                                                "save_interval", "log_interval", "device",
                                                "num_workers", "resume", "trust_checkpoint",
                                                "with_cp", "compile"),
                                       repr=False)

    def run_identity(self) -> dict[str, Any]:
        """The settings that define the run (what a resume must repeat)."""
        values = dataclasses.asdict(self)
        for key in (*self.RESUMABLE, "RESUMABLE"):
            values.pop(key)
        return json.loads(json.dumps(values, default=str))


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
                    dataset_name: str) -> ModelConfig:
    """The model as trained: the class count of the data, the crop, the drop path rate."""
    crop = settings.crop or base.backbone.img_size
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
    head = base.head
    old_crop = base.backbone.img_size
    stride = max(1, round(base.inference.stride[0] * crop / old_crop))
    return base.replace(
        name=f"{base.name}-finetuned" if not base.name.endswith("-finetuned") else base.name,
        dataset=dataset_name, head=head,
        # A plain ViT's img_size is its position grid's pretraining size (resized to any
        # input); BEiT's relative position tables are sized for the crop.
        backbone=dataclasses.replace(
            base.backbone, img_size=crop if base.backbone.kind == "beit" else
            base.backbone.img_size, drop_path_rate=settings.drop_path),
        inference=dataclasses.replace(base.inference,
                                      img_scale=(int(img_scale[0]), int(img_scale[1])),
                                      crop_size=(crop, crop), stride=(stride, stride)),
        weights_url=None, description=f"fine-tuned on {dataset_name}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Gradient checkpointing of every ViT block, injector and extractor of ``model``."""
    for module in model.modules():
        if isinstance(module, Block | AdapterAttention):
            module.with_cp = enabled


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated on the GPU (CUDA), else peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    """Builds everything a run needs from :class:`TrainSettings`; :meth:`run` trains."""

    def __init__(self, settings: TrainSettings) -> None:
        self.settings = s = settings
        for name in ("iters", "batch_size", "log_interval"):
            if getattr(s, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
        self.work_dir = Path(s.work_dir)
        state_path = self.work_dir / STATE_FILE
        if state_path.exists() and not s.resume:
            raise TrainingError(f"{self.work_dir} already holds a training run; pass --resume "
                                "to continue it, or choose another --work-dir")
        if s.resume and not state_path.exists():
            raise TrainingError(f"nothing to resume: {state_path} does not exist")
        self.train_data = open_split(s.data_root, s.dataset, "train")
        self.val_data = self._val_split()
        self.classes = class_info(self.train_data)
        base = resolve_config(s.model)
        dataset_name = (self.train_data.layout.classes if self.train_data.layout.name != "custom"
                        else "custom")
        self.config = training_config(base, s, len(self.classes.names), dataset_name)
        self.shard, self.device = join_processes(s.device)
        self.rank, self.world_size = self.shard.rank, self.shard.world_size
        dtype = autocast_dtype(s.precision, self.device)
        saved = self._read_state() if s.resume else None

        torch.manual_seed(s.seed)
        self.model: SegmentationModel = build_model(self.config, device=self.device)
        self.model.classes, self.model.palette = self.classes.names, self.classes.palette
        if saved is None and s.init:
            initialize(self.model, s.init, trust_checkpoint=s.trust_checkpoint)
        elif saved is None:
            logger.warning("no --init: training from random weights")
        if self.world_size > 1:
            sync_batchnorms(self.model, self.device)
        large = self.config.backbone.embed_dim >= 1024
        self.with_cp = s.with_cp if s.with_cp is not None else large
        set_checkpointing(self.model, self.with_cp)
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
        groups = layer_decay_param_groups(self.model, s.lr, s.weight_decay, s.layer_decay,
                                          self.config.backbone.depth)
        self.optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999),
                                           weight_decay=s.weight_decay)
        self.schedule = PolySchedule(PolyScheduleConfig(
            max_iters=s.iters, warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio))
        self.pipeline = TrainPipelineConfig(img_scale=self.config.inference.img_scale,
                                            crop=self.config.backbone.img_size)
        self.dataset = TrainDataset(self.train_data, self.pipeline, self.config.inference,
                                    s.seed)
        self.iteration = 0
        self.best_miou = -1.0
        if saved is not None:
            self._restore(saved)
        if self.shard.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.loss_module: nn.Module = LossModule(self.model, self.criterion)
        if self.world_size > 1:
            self.loss_module = DistributedDataParallel(
                self.loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- state --------------------------------------------------------------------------------

    def _val_split(self) -> EvalDataset | None:
        try:
            return open_split(self.settings.data_root, self.settings.dataset, "val")
        except DatasetError as exc:
            if self.settings.eval_interval > 0:
                logger.warning("no evaluation: %s", exc)
            return None

    def _read_state(self) -> dict[str, Any]:
        path = self.work_dir / STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt file of any kind
            raise TrainingError(f"{path} is not a readable training state: {exc}") from None
        if state.get("version") != STATE_VERSION:
            raise TrainingError(f"{path} was written by another version of the trainer")
        ours = self.settings.run_identity()
        theirs = state["settings"]
        differences = [f"{k}: {theirs.get(k)!r} in the work dir, {ours.get(k)!r} now"
                       for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
        if state.get("world_size", 1) != self.world_size:
            differences.insert(0, f"processes: {state.get('world_size', 1)} in the work dir, "
                                  f"{self.world_size} now (the batches depend on it)")
        if state["model_config"] != json.loads(json.dumps(self.config.to_dict())):
            differences.insert(0, f"model: {state['model_config']['name']} (its config) in the "
                                  "work dir differs from the one asked for now")
        if differences:
            raise TrainingError(f"cannot resume {self.work_dir}: it holds a run with other "
                                "settings (" + "; ".join(differences) + "); resume with the "
                                "same settings, or start another --work-dir")
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        latest = self.work_dir / LATEST
        ckpt = load_checkpoint(self.model, latest)
        from ..weights.safetensors import load_safetensors

        _, metadata = load_safetensors(latest)
        if int(metadata.get("iteration", -1)) != state["iteration"]:
            raise TrainingError(f"{latest} (iteration {metadata.get('iteration')}) and "
                                f"{STATE_FILE} (iteration {state['iteration']}) disagree")
        del ckpt
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        torch.set_rng_state(state["torch_rng"][self.rank])
        if self.device.type == "cuda" and state["cuda_rng"][self.rank] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.rank], self.device)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.shard.is_main:
            self._truncate_log(self.iteration)
        logger.info("resumed %s at iteration %d", self.work_dir, self.iteration)

    def _truncate_log(self, iteration: int) -> None:
        """Drop log records written after the saved iteration (an interrupted run's tail)."""
        path = self.work_dir / LOG_FILE
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("iter", 0) <= iteration:
                kept.append(line)
        _atomic_write(path, "".join(f"{line}\n" for line in kept).encode())

    def save(self, best: bool = False) -> None:
        """Write config.json, latest.safetensors and the training state (and best); every
        process calls it (the RNG states of all are saved), rank 0 writes."""
        rng = gather_objects((torch.get_rng_state(),
                              torch.cuda.get_rng_state(self.device)
                              if self.device.type == "cuda" else None)) if not best else []
        if not self.shard.is_main:
            if not best:  # the files are complete for every rank when save returns
                self.shard.barrier()
            return
        config = {**self.config.to_dict(), "classes": self.classes.names,
                  "palette": self.classes.palette}
        _atomic_write(self.work_dir / CONFIG_FILE, (json.dumps(config, indent=1) + "\n").encode())
        tensors, _ = checkpoint_filter(self.model.state_dict(), "model")
        metadata = {"format": "vitadapter", "source": self.config.name,
                    "classes": json.dumps(self.classes.names),
                    "palette": json.dumps(self.classes.palette),
                    "iteration": str(self.iteration)}
        save_safetensors(tensors, self.work_dir / (BEST if best else LATEST), metadata)
        if best:
            return
        state = {
            "version": STATE_VERSION, "iteration": self.iteration,
            "settings": self.settings.run_identity(),
            "model_config": json.loads(json.dumps(self.config.to_dict())),
            "optimizer": self.optimizer.state_dict(), "best_miou": self.best_miou,
            "world_size": self.world_size,
            "torch_rng": [cpu for cpu, _ in rng], "cuda_rng": [cuda for _, cuda in rng],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "data_order": {"seed": self.settings.seed, "dataset_size": len(self.dataset),
                           "batch_size": self.settings.batch_size,
                           "next_batch": self.iteration},
        }
        tmp = self.work_dir / (STATE_FILE + ".partial")
        torch.save(state, tmp)
        os.replace(tmp, self.work_dir / STATE_FILE)
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
        """Train up to iteration ``until`` (default: the end), saving as configured; an
        interrupt (Ctrl-C) saves the last finished iteration before it propagates."""
        s = self.settings
        stop = min(until or s.iters, s.iters)
        self.model.train()
        loader = train_loader(self.dataset, s.batch_size, self.iteration, stop, s.num_workers,
                              self.rank, self.world_size)
        window: list[dict[str, float]] = []
        tick = time.monotonic()
        try:
            for images, labels in loader:
                window.append(self.step(images, labels))
                done = self.iteration
                if done % s.log_interval == 0 or done == stop:
                    seconds = (time.monotonic() - tick) / len(window)
                    self._log(window, seconds)
                    window, tick = [], time.monotonic()
                if s.eval_interval > 0 and (done % s.eval_interval == 0 or done == s.iters):
                    self.evaluate()
                    tick = time.monotonic()
                if done % s.save_interval == 0 or done == stop:
                    self.save()
        except KeyboardInterrupt:
            if self.world_size > 1:  # the others may be gone: no collective save
                logger.info("interrupted at iteration %d; %s holds the last periodic save",
                            self.iteration, self.work_dir)
                raise
            self.save()
            logger.info("interrupted: saved iteration %d in %s", self.iteration, self.work_dir)
            raise
        if self.shard.is_main:
            self.plot()

    def _log(self, window: list[dict[str, float]], seconds: float) -> None:
        """One record for the window (loss terms averaged over it and over the processes)."""
        mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
        peak = peak_memory_mb(self.device)
        mean["_peak"] = peak
        mean = mean_over_processes(mean, self.device)
        if not self.shard.is_main:
            return
        mean.pop("_peak")
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        eta = seconds * (self.settings.iters - self.iteration)
        images = self.settings.batch_size * self.world_size
        record = {"iter": self.iteration, "loss": mean.pop("loss"), **mean, "lr": lr,
                  "s_per_iter": seconds, "eta_s": eta, "images_per_s": images / seconds,
                  "peak_mem_mb": peak,
                  "peak_mem_mb_per_image": peak / self.settings.batch_size}
        self._append(record)
        kinds = {kind: sum(v for k, v in mean.items() if k.endswith(kind))
                 for kind in ("loss_cls", "loss_mask", "loss_dice")}
        terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in kinds.items())
        hours, rest = divmod(int(eta), 3600)
        logger.info("iter %d/%d  loss %.4f (%s)  lr %.3g  %.2f s/iter  ETA %d:%02d:%02d",
                    self.iteration, self.settings.iters, record["loss"], terms, lr, seconds,
                    hours, rest // 60, rest % 60)

    def _append(self, record: Mapping[str, Any]) -> None:
        with open(self.work_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate(self) -> float | None:
        """mIoU of the current weights on the val split (None without one); keeps the best."""
        if self.val_data is None:
            return None
        from ..evaluation.loop import run_evaluation
        from ..segmenter import Segmenter

        segmenter = Segmenter.from_model(self.model)
        try:
            result = run_evaluation(lambda path: segmenter.segment(path).label_map,
                                    self.val_data, settings={}, progress=False,
                                    shard=self.shard)
        finally:
            self.model.train()
        metrics = result.metrics
        if not self.shard.is_main:
            self.best_miou = max(self.best_miou, metrics.miou)
            return metrics.miou
        record = {"iter": self.iteration, "mode": "val", "mIoU": metrics.miou,
                  "mAcc": metrics.macc, "aAcc": metrics.all_acc, "images": result.images}
        self._append(record)
        logger.info("iter %d: val mIoU %.2f  mAcc %.2f  aAcc %.2f", self.iteration,
                    100 * metrics.miou, 100 * metrics.macc, 100 * metrics.all_acc)
        if metrics.miou > self.best_miou:
            self.best_miou = metrics.miou
            self.save(best=True)
        return metrics.miou

    def plot(self) -> Path | None:
        """curves.png from log.jsonl (loss and mIoU); skipped without matplotlib."""
        from .curves import plot_curves

        return plot_curves(self.work_dir / LOG_FILE, self.work_dir / CURVES)


def train(settings: TrainSettings) -> Trainer:
    """Train as ``settings`` say (one process of several under ``torchrun``); returns the
    finished trainer."""
    trainer = Trainer(settings)
    try:
        trainer.run()
    finally:
        trainer.shard.close()
    return trainer

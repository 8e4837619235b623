"""``Segmenter``: a photo in, its semantic segmentation out, exactly as the official test
pipeline computes it.

The Segmenter is the test-time pipeline (images -> preprocess -> windows -> backend -> merge ->
result) around a *crop runner* (:mod:`vitadapter.backends`) that turns normalised crops into
class scores: the PyTorch model, or an ONNX session (``Segmenter.from_onnx``), in which case
torch is never imported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends.base import CropRunner
from .config.presets import SEED_PRESET
from .config.schema import Behaviour, ModelConfig, Precision
from .errors import CheckpointError, ConfigError
from .pipeline.images import ChannelOrder, load_image
from .pipeline.merge import LabelMap, check_finite, merge_views
from .pipeline.preprocess import View, augmented_views
from .pipeline.result import SegmentationResult
from .pipeline.windows import run_windows

if TYPE_CHECKING:
    from .modeling.segmentor import SegmentationModel


class Segmenter:
    """Semantic segmentation of photos with a ViT-Adapter model.

    >>> seg = Segmenter("cocostuff164k-beit-adapter-l-m2f-896", checkpoint="weights.zip")
    >>> result = seg("photo.jpg")            # or seg([img1, img2, ...])
    >>> result.label_map                      # (H, W) class ids at the photo's size

    ``model`` is a preset name, or a loaded crop runner (a backend of
    :mod:`vitadapter.backends`); ``config`` (a path to a config.json, a dict or a ModelConfig)
    replaces the preset. Without ``checkpoint`` a preset's release weights are taken from the
    cache (``$VITADAPTER_HOME``) or downloaded once. ``backbone_checkpoint``: the ViT's weights
    where they come as a file of their own (Meta's DINOv3 segmentor: ``checkpoint`` is the head
    file, this the backbone file; a transformers ``DINOv3ViTModel`` safetensors also works).
    ``device`` defaults to CUDA when available (an integer is a CUDA index).
    ``tta`` turns on the multi-scale + flip test-time augmentation of the config's pipeline
    (the official mmseg one, or Meta's for ``inference.pipeline="dinov3"``); ``batch_windows``
    runs that many slide windows per forward pass (same results, more memory). ``precision``
    is ``"fp32"`` (default, the official numbers), ``"bf16"`` (autocast, CPU or CUDA),
    ``"fp16"`` (autocast, CUDA) or ``"int8"`` (dynamically quantised Linear layers, CPU).
    ``compile=True`` runs the PyTorch model through ``torch.compile`` (the first window of each
    batch size compiles, minutes for a large model; the compiled code is cached on disk under
    ``$VITADAPTER_HOME/compile``, so later processes start in seconds).
    The class methods build one from each kind of source: :meth:`from_pretrained`,
    :meth:`from_config`, :meth:`from_model`, :meth:`from_onnx`.
    """

    def __init__(self, model: str | CropRunner = SEED_PRESET, *, config: Any = None,
                 checkpoint: str | Path | None = None, device: str | int | None = None,
                 behaviour: Behaviour | None = None, tta: bool = False,
                 batch_windows: int = 1, trust_checkpoint: bool = False,
                 precision: Precision = "fp32",
                 backbone_checkpoint: str | Path | None = None,
                 compile: bool = False) -> None:
        if batch_windows < 1:
            raise ConfigError(f"batch_windows must be at least 1, got {batch_windows}")
        runner = model if not isinstance(model, str) else _load_torch_runner(
            config if config is not None else model, checkpoint, device=device,
            behaviour=behaviour, precision=precision, trust_checkpoint=trust_checkpoint,
            backbone_checkpoint=backbone_checkpoint, compile=compile)
        self.runner: CropRunner = runner
        self.tta = tta
        self.batch_windows = batch_windows

    @classmethod
    def from_pretrained(cls, preset: str = SEED_PRESET, **kwargs: Any) -> Segmenter:
        """A preset with its release weights (downloaded once) or ``checkpoint=...``."""
        return cls(preset, **kwargs)

    @classmethod
    def from_config(cls, config: Any, checkpoint: str | Path, **kwargs: Any) -> Segmenter:
        """A model described by ``config`` (config.json path, dict or ModelConfig) with the
        weights of ``checkpoint``."""
        return cls(config=config, checkpoint=checkpoint, **kwargs)

    @classmethod
    def from_model(cls, model: SegmentationModel, *, tta: bool = False, batch_windows: int = 1,
                   precision: Precision = "fp32", compile: bool = False) -> Segmenter:
        """Wrap an already built (and loaded) :class:`SegmentationModel`, e.g. one with random
        weights for benchmarks."""
        from .backends.torch import TorchRunner

        return cls(TorchRunner(model, precision, compile=compile), tta=tta,
                   batch_windows=batch_windows)

    @classmethod
    def from_onnx(cls, path: str | Path, *, providers: Sequence[str] | None = None,
                  threads: int | None = None, tta: bool = False,
                  batch_windows: int = 1) -> Segmenter:
        """Run a file written by ``vitadapter export-onnx`` with onnxruntime; torch is not
        imported. ``providers`` are onnxruntime execution providers (default CPU);
        ``threads`` sets its intra-op threads. Preprocessing, slide windows and merge are the
        same as the PyTorch backend's, with the config, classes and palette from the file."""
        from .backends.onnx import OnnxRunner

        runner = OnnxRunner.load(path, providers=providers, threads=threads)
        return cls(runner, tta=tta, batch_windows=batch_windows)

    def __repr__(self) -> str:
        precision = getattr(self.runner, "precision", None)
        crop = "x".join(str(v) for v in self.config.inference.crop_size)
        return (f"Segmenter({self.name!r}, {type(self.runner).__name__} on {self.device}"
                f"{f', {precision}' if precision else ''}, {self.config.num_classes} classes "
                f"({self.config.dataset}), crop {crop}, "
                f"tta={self.tta}, batch_windows={self.batch_windows})")

    @property
    def config(self) -> ModelConfig:
        return self.runner.info.config

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.runner.info.classes

    @property
    def palette(self) -> np.ndarray:
        return self.runner.info.palette

    @property
    def device(self) -> str:
        return self.runner.device

    @property
    def name(self) -> str:
        return self.config.name

    def __call__(self, image: Any, *, tta: bool | None = None,
                 channel_order: ChannelOrder = "rgb",
                 ) -> SegmentationResult | list[SegmentationResult]:
        """Segment one image, or each image of a list (see :func:`load_image` for the accepted
        kinds; ``channel_order="bgr"`` for OpenCV arrays)."""
        if isinstance(image, list | tuple):
            return [self.segment(img, tta=tta, channel_order=channel_order) for img in image]
        return self.segment(image, tta=tta, channel_order=channel_order)

    def segment(self, image: Any, *, tta: bool | None = None,
                channel_order: ChannelOrder = "rgb") -> SegmentationResult:
        start = time.perf_counter()
        rgb = load_image(image, channel_order=channel_order)
        cfg = self.config.inference
        views = augmented_views(rgb, cfg, self.tta if tta is None else tta)
        merged = self._slide_merge(views)
        return SegmentationResult(
            label_map=merged.labels, class_names=self.class_names, palette=self.palette,
            confidence=merged.confidence, pixel_count=merged.pixel_count, image=rgb,
            model=self.name, seconds=time.perf_counter() - start)

    def _slide_merge(self, views: list[View]) -> LabelMap:
        """Slide windows and merge: on the runner's device when it has its own merge (the
        PyTorch backend), else in numpy (ONNX)."""
        cfg = self.config.inference
        device_merge = device_merge_of(self.runner, "slide_merge")
        if device_merge is not None:
            return device_merge(views, cfg.crop_size, cfg.stride, self.batch_windows)
        slides = [run_windows(v, self.runner, cfg.crop_size, cfg.stride, self.batch_windows,
                              cfg.pipeline) for v in views]
        check_finite(slides)
        return merge_views(slides, logits=self.config.head.kind == "upernet")

    def scores(self, image: Any, *, channel_order: ChannelOrder = "rgb") -> np.ndarray:
        """The averaged slide-inference class scores of the single-scale view, before the final
        resize to the photo's size: (num_classes, h, w) at the preprocessed size."""
        cfg = self.config.inference
        (view,) = augmented_views(load_image(image, channel_order=channel_order), cfg)
        return run_windows(view, self.runner, cfg.crop_size, cfg.stride,
                           self.batch_windows, cfg.pipeline).canvas()


def device_merge_of(runner: CropRunner, name: str) -> Any:
    """The runner's own ``slide_merge`` / ``forward`` when it merges on an accelerator, else
    None: on the CPU the numpy merge is the faster one (``benchmarks/merge.py``, 171 classes:
    6.3 s against 20.6 s for a 4000x3000 photo, 3.6 s against 6.6 s for 640x480 in the worst
    case), so the scores come back to numpy there."""
    if runner.device.startswith("cpu"):
        return None
    return getattr(runner, name, None)


def _load_torch_runner(config: Any, checkpoint: str | Path | None, **kwargs: Any) -> CropRunner:
    from .backends.torch import TorchRunner
    from .modeling.build import resolve_config
    from .weights.download import fetch_weights

    cfg = resolve_config(config, kwargs.pop("behaviour"))
    if checkpoint is not None:
        return TorchRunner.load(cfg, checkpoint, **kwargs)
    if kwargs["backbone_checkpoint"] is not None:
        raise ConfigError("a backbone checkpoint goes with the head's checkpoint: pass "
                          "checkpoint=... (--checkpoint) too")
    cached = fetch_weights(cfg)
    try:
        return TorchRunner.load(cfg, cached, **kwargs)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. The cached weights are damaged: delete {cached} and "
                              "run again to download them again") from None

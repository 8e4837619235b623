"""``Segmenter``: a photo in, its semantic segmentation out, exactly as the official test
pipeline computes it.

The Segmenter owns the test-time pipeline (loading, preprocessing, slide windows, merge) and a
*crop runner* that turns normalised crops into class scores: the PyTorch model, or an ONNX
session (``Segmenter.from_onnx``) in which case torch is never imported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .classes import dataset_info
from .config import Behaviour, ModelConfig
from .errors import ConfigError
from .preprocessing import ChannelOrder, augmented_views, load_image, preprocess
from .presets import SEED_PRESET
from .result import SegmentationResult
from .slide import CropRunner, merge_views, run_windows

if TYPE_CHECKING:
    from .modeling.segmentor import Segmentor
    from .precision import Precision


class Segmenter:
    """Semantic segmentation of photos with a ViT-Adapter + Mask2Former model.

    >>> seg = Segmenter("cocostuff164k-beit-adapter-l-m2f-896", checkpoint="weights.zip")
    >>> result = seg("photo.jpg")            # or seg([img1, img2, ...])
    >>> result.label_map                      # (H, W) class ids at the photo's size

    ``model`` is a preset name; ``config`` (a path to a config.json, a dict or a ModelConfig)
    replaces it. Without ``checkpoint`` a preset's release weights are taken from the cache
    (``$VITADAPTER_HOME``) or downloaded once. ``device`` defaults to CUDA when available.
    ``tta`` turns on the official multi-scale + flip test-time augmentation; ``batch_windows``
    runs that many slide windows per forward pass (same results, more memory). ``precision``
    is ``"fp32"`` (default, the official numbers), ``"bf16"`` (autocast, CPU or CUDA),
    ``"fp16"`` (autocast, CUDA) or ``"int8"`` (dynamically quantised Linear layers, CPU).
    """

    def __init__(self, model: str = SEED_PRESET, *, config: Any = None,
                 checkpoint: str | Path | None = None, device: str | None = None,
                 behaviour: Behaviour | None = None, tta: bool = False,
                 batch_windows: int = 1, trust_checkpoint: bool = False,
                 precision: Precision = "fp32") -> None:
        from .build import resolve_config
        from .torch_runner import TorchRunner, default_device, load_segmentor
        from .weights import fetch_weights

        cfg = resolve_config(config if config is not None else model, behaviour)
        if checkpoint is None:
            checkpoint = fetch_weights(cfg)
        network = load_segmentor(cfg, checkpoint, device=device or default_device(),
                                 trust_checkpoint=trust_checkpoint)
        runner = TorchRunner(network, precision, owns_model=True)
        self._setup(runner, network.config, network.classes, network.palette,
                    str(runner.device), tta, batch_windows)

    @classmethod
    def from_model(cls, model: Segmentor, *, tta: bool = False, batch_windows: int = 1,
                   precision: Precision = "fp32") -> Segmenter:
        """Wrap an already built (and loaded) :class:`Segmentor`, e.g. one with random weights
        for benchmarks."""
        from .torch_runner import TorchRunner

        runner = TorchRunner(model, precision)
        return cls._from_runner(runner, model.config, model.classes, model.palette,
                                str(runner.device), tta, batch_windows)

    @classmethod
    def from_onnx(cls, path: str | Path, *, providers: Sequence[str] | None = None,
                  threads: int | None = None, tta: bool = False,
                  batch_windows: int = 1) -> Segmenter:
        """Run a file written by ``vitadapter export-onnx`` with onnxruntime; torch is not
        imported. ``providers`` are onnxruntime execution providers (default CPU);
        ``threads`` sets its intra-op threads. Preprocessing, slide windows and merge are the
        same as the PyTorch backend's, with the config, classes and palette from the file."""
        from .onnx_runner import OnnxRunner

        runner = OnnxRunner(path, providers=providers, threads=threads)
        meta = runner.metadata
        return cls._from_runner(runner, meta.config, meta.classes, meta.palette,
                                runner.device, tta, batch_windows)

    @classmethod
    def _from_runner(cls, runner: CropRunner, config: ModelConfig,
                     classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None,
                     device: str, tta: bool, batch_windows: int) -> Segmenter:
        self = cls.__new__(cls)
        self._setup(runner, config, classes, palette, device, tta, batch_windows)
        return self

    def _setup(self, runner: CropRunner, config: ModelConfig,
               classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None,
               device: str, tta: bool, batch_windows: int) -> None:
        if batch_windows < 1:
            raise ConfigError(f"batch_windows must be at least 1, got {batch_windows}")
        info = dataset_info(config.dataset, config.num_classes)
        if classes is not None and len(classes) != config.num_classes:
            raise ConfigError(f"the checkpoint names {len(classes)} classes, the model "
                              f"predicts {config.num_classes}")
        self.runner = runner
        self.config = config
        self.device = device
        self.tta = tta
        self.batch_windows = batch_windows
        self.class_names: tuple[str, ...] = tuple(classes) if classes else info.classes
        self.palette = (np.asarray(palette, np.uint8).reshape(-1, 3)
                        if palette is not None else info.palette_array())
        if len(self.palette) != config.num_classes:
            raise ConfigError(f"the palette has {len(self.palette)} colours for "
                              f"{config.num_classes} classes")

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
        slides = [run_windows(v, self.runner, cfg.crop_size, cfg.stride, self.batch_windows)
                  for v in views]
        merged = merge_views(slides)
        return SegmentationResult(
            label_map=merged.labels, class_names=self.class_names, palette=self.palette,
            confidence=merged.confidence, pixel_count=merged.pixel_count, image=rgb,
            model=self.name, seconds=time.perf_counter() - start)

    def scores(self, image: Any, *, channel_order: ChannelOrder = "rgb") -> np.ndarray:
        """The averaged slide-inference class scores of the single-scale view, before the final
        resize to the photo's size: (num_classes, h, w) at the preprocessed size."""
        cfg = self.config.inference
        view = preprocess(load_image(image, channel_order=channel_order), cfg)
        return run_windows(view, self.runner, cfg.crop_size, cfg.stride,
                           self.batch_windows).canvas()

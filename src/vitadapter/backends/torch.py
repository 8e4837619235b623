"""The PyTorch backend: a :class:`SegmentationModel` as a crop runner, at a chosen precision."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config.schema import Behaviour, Precision
from ..errors import ConfigError
from ..modeling.build import ConfigLike, build_model
from ..modeling.segmentor import SegmentationModel
from ..pipeline.merge import LabelMap
from ..pipeline.preprocess import View
from ..weights.checkpoint import load_checkpoint
from .base import ModelInfo
from .compile import compile_module
from .precision import autocast, check_precision, prepare_model
from .torch_merge import check_finite_on_device, merge_on_device, run_windows_on_device


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | int | None) -> str:
    """The torch device for a ``device`` argument: None picks CUDA when available; an integer
    (or digits) is a CUDA index as in Hugging Face; ``gpu`` means ``cuda``. A backend this
    torch cannot use is a :class:`ConfigError` in one line."""
    if device is None:
        return default_device()
    text = str(device).strip().lower()
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "gpu" or text.startswith("gpu:"):
        text = "cuda" + text[3:]
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not a device: use cpu, cuda, cuda:N, N (a "
                          "CUDA index) or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"device {device!r}: CUDA is not available here (no GPU, or "
                              "this torch was built without CUDA); use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device {device!r}: there are {count} CUDA device(s), "
                              f"cuda:0..cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS (Apple GPU) is not available here; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported: use cpu, cuda or mps")
    return str(parsed)


def load_model(cfg: ConfigLike, checkpoint: str | Path, *, device: str = "cpu",
               behaviour: Behaviour | None = None, trust_checkpoint: bool = False,
               backbone_checkpoint: str | Path | None = None) -> SegmentationModel:
    """Build on the meta device, fill from ``checkpoint`` (and ``backbone_checkpoint``, for
    weights distributed as a head file and a backbone file) and move to ``device``."""
    model = build_model(cfg, behaviour=behaviour, device="meta")
    load_checkpoint(model, checkpoint, trust_checkpoint=trust_checkpoint,
                    backbone=backbone_checkpoint)
    return model.to(device)


class TorchRunner:
    """Runs batches of normalised crops through a loaded :class:`SegmentationModel` at
    ``precision`` (``owns_model``: int8 may quantise the model in place instead of a copy;
    ``int8_groups``: which Linear groups int8 quantises, see ``backends.precision``).

    ``compile``: the forward runs through ``torch.compile`` (inductor, compiled on the first
    call of each batch size, the compiled code cached on disk: :mod:`.compile`)."""

    def __init__(self, model: SegmentationModel, precision: Precision = "fp32",
                 owns_model: bool = False, int8_groups: Sequence[str] | None = None,
                 compile: bool = False) -> None:
        self._device = next(model.parameters()).device
        self.device = str(self._device)
        self.precision = check_precision(precision, self._device)
        if compile and self.precision == "int8":
            raise ConfigError("compile does not take int8 (dynamically quantised Linear "
                              "layers); use fp32 or bf16 with compile")
        self.info = ModelInfo.of(model.config, model.classes, model.palette)
        self.model = prepare_model(model.eval(), self.precision, inplace=owns_model,
                                   int8_groups=int8_groups)
        self.compiled = compile
        self._forward: Callable[[torch.Tensor], torch.Tensor] = (
            compile_module(self.model) if compile else self.model)

    @classmethod
    def load(cls, cfg: ConfigLike, checkpoint: str | Path, *, device: str | int | None = None,
             behaviour: Behaviour | None = None, precision: Precision = "fp32",
             trust_checkpoint: bool = False,
             backbone_checkpoint: str | Path | None = None,
             compile: bool = False) -> TorchRunner:
        """Build the model of ``cfg``, load ``checkpoint`` (and ``backbone_checkpoint``) into
        it and wrap it."""
        model = load_model(cfg, checkpoint, device=resolve_device(device),
                           behaviour=behaviour, trust_checkpoint=trust_checkpoint,
                           backbone_checkpoint=backbone_checkpoint)
        return cls(model, precision, owns_model=True, compile=compile)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.forward(torch.from_numpy(np.ascontiguousarray(crops))).cpu().numpy()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Class scores of a crop batch, float32 on the runner's device."""
        with torch.inference_mode(), autocast(self.precision, self._device):
            return self._forward(crops.to(self._device)).float()

    def slide_merge(self, views: Sequence[View], crop: tuple[int, int],
                    stride: tuple[int, int], batch_windows: int = 1) -> LabelMap:
        """Slide windows and merge of ``views`` on this runner's device (the numpy path's
        labels, bit for bit: :mod:`.torch_merge`), in the pipeline of the runner's config."""
        pipeline = self.info.config.inference.pipeline
        with torch.inference_mode():
            slides = [run_windows_on_device(v, self.forward, self._device, crop, stride,
                                            batch_windows, pipeline) for v in views]
            check_finite_on_device(slides)
            return merge_on_device(slides, logits=self.info.config.head.kind == "upernet")

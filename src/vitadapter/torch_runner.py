"""The PyTorch backend: a loaded :class:`Segmentor` as a crop runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .build import ConfigLike, build_model
from .checkpoint import load_checkpoint
from .config import Behaviour
from .modeling.segmentor import Segmentor
from .precision import Precision, autocast, check_precision, prepare_model


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_segmentor(cfg: ConfigLike, checkpoint: str | Path, *, device: str,
                   behaviour: Behaviour | None = None,
                   trust_checkpoint: bool = False) -> Segmentor:
    """Build on the meta device, fill from ``checkpoint`` and move to ``device``."""
    model = build_model(cfg, behaviour=behaviour, device="meta")
    load_checkpoint(model, checkpoint, trust_checkpoint=trust_checkpoint)
    return model.to(device)


class TorchRunner:
    """Runs batches of normalised crops through a :class:`Segmentor` at ``precision``
    (``owns_model``: int8 may quantise the model in place instead of a copy)."""

    def __init__(self, model: Segmentor, precision: Precision = "fp32",
                 owns_model: bool = False) -> None:
        self.device = next(model.parameters()).device
        self.precision = check_precision(precision, self.device)
        self.model = prepare_model(model.eval(), self.precision, inplace=owns_model)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            scores = self.model(batch)
        return scores.float().cpu().numpy()

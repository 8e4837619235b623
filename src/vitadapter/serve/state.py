"""The service's state: what it needs of a segmenter, its limits, and the slot that holds the
model once loaded (or why it is not)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..config.schema import ModelConfig
from ..pipeline.result import SegmentationResult
from .errors import ServiceError

logger = logging.getLogger(__name__)


class SegmenterLike(Protocol):
    """What the service needs of a :class:`vitadapter.Segmenter`."""

    tta: bool

    @property
    def config(self) -> ModelConfig: ...
    @property
    def class_names(self) -> tuple[str, ...]: ...
    @property
    def palette(self) -> np.ndarray: ...
    @property
    def device(self) -> str: ...
    @property
    def name(self) -> str: ...

    def segment(self, image: Any, *, tta: bool | None = None) -> SegmentationResult: ...


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service."""

    max_queue: int = 8
    max_pixels: int = 40_000_000
    max_upload_bytes: int = 20 * 2**20
    timeout: float = 600.0
    # The upload alone (the request holds a queue place meanwhile): short, so that slow or
    # stalled clients cannot keep every place for the whole ``timeout``.
    upload_timeout: float = 60.0

    @property
    def upload_deadline(self) -> float:
        return min(self.upload_timeout, self.timeout)


class ModelSlot:
    """The segmenter once loaded, or why it is not."""

    def __init__(self, segmenter: SegmenterLike | None) -> None:
        self.segmenter = segmenter
        self.error: str | None = None

    def load(self, loader: Callable[[], SegmenterLike],
             on_error: Callable[[Exception], None] | None) -> None:
        start = time.perf_counter()
        try:
            segmenter = loader()
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            logger.error("could not load the model: %s", self.error)
            if on_error is not None:
                on_error(exc)
            return
        self.segmenter = segmenter
        logger.info("model %s loaded on %s in %.1f s; ready", segmenter.name, segmenter.device,
                    time.perf_counter() - start)

    def require(self) -> SegmenterLike:
        if self.segmenter is None:
            raise self.unavailable()
        return self.segmenter

    def unavailable(self) -> ServiceError:
        return ServiceError(503, f"the model could not be loaded: {self.error}" if self.error
                            else "the model is loading; retry shortly", {"Retry-After": "5"})

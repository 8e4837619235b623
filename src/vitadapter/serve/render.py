"""What the service answers: a segmentation rendered as the PNG asked for or the JSON fields,
and the description of the model being served."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from typing import Any, Literal

from PIL import Image

from ..errors import ImageError, InferenceError
from ..pipeline.images import decode_image
from ..pipeline.result import SegmentationResult
from .errors import ServiceError
from .state import Limits, SegmenterLike

OutputFormat = Literal["json", "labels", "color", "overlay"]
Rendered = bytes | dict[str, Any]


def segment_and_render(segmenter: SegmenterLike, data: bytes, tta: bool,
                       render: Callable[[SegmentationResult], Rendered],
                       ) -> tuple[Rendered, float, float]:
    """On the inference thread: decode, segment, render; with the start time and duration."""
    start = time.perf_counter()
    try:
        result = segmenter.segment(decode_image(data, "the upload"), tta=tta)
    except ImageError as exc:
        raise ServiceError(422, str(exc)) from None
    except InferenceError as exc:  # the model's fault, said plainly
        raise ServiceError(500, str(exc)) from None
    return render(result), start, time.perf_counter() - start


def render(result: SegmentationResult, output: OutputFormat, alpha: float, legend: bool,
           include_overlay: bool) -> Rendered:
    """The PNG asked for, or the JSON answer's fields but timing and tta."""
    images: dict[str, Callable[[], Image.Image]] = {
        "labels": result.label_image,
        "color": lambda: Image.fromarray(result.colorize()),
        "overlay": lambda: Image.fromarray(result.overlay(alpha, legend=legend)),
    }
    if output != "json":
        return png(images[output]())
    overlay = None
    if include_overlay:
        overlay = "data:image/png;base64," + base64.b64encode(png(images["overlay"]())).decode()
    height, width = result.label_map.shape
    return {"model": result.model, "width": width, "height": height,
            "classes": result.summary(), "overlay": overlay}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def model_info(segmenter: SegmenterLike, limits: Limits) -> dict[str, Any]:
    cfg = segmenter.config
    return {
        "name": segmenter.name, "dataset": cfg.dataset, "num_classes": cfg.num_classes,
        "classes": [{"id": i, "name": name, "color": [int(v) for v in segmenter.palette[i]]}
                    for i, name in enumerate(segmenter.class_names)],
        "crop_size": cfg.inference.crop_size, "stride": cfg.inference.stride,
        "img_scale": cfg.inference.img_scale, "device": segmenter.device,
        "behaviour": cfg.behaviour, "tta": segmenter.tta,
        "limits": {"max_queue": limits.max_queue, "max_pixels": limits.max_pixels,
                   "max_upload_bytes": limits.max_upload_bytes,
                   "timeout_seconds": limits.timeout,
                   "upload_timeout_seconds": limits.upload_deadline},
    }

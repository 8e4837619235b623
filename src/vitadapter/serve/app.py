"""The FastAPI application: ``create_app(segmenter)`` or ``create_app(loader=...)``.

Endpoints: ``POST /v1/segment``, ``GET /v1/health``, ``GET /v1/model``, ``GET /`` (a page to
try it) and the OpenAPI schema at ``/openapi.json`` (browsable at ``/docs``). Every refusal is
a 4xx/5xx status with ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Annotated, Any, Literal, Protocol, TypeVar

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..config.schema import ModelConfig
from ..errors import ImageError
from ..pipeline.images import decode_image
from ..pipeline.result import SegmentationResult
from .schemas import ErrorBody, HealthBody, ModelBody, SegmentBody, Timing
from .uploads import ServiceError, check_image, discard_body, image_bytes, read_body
from .worker import InferenceQueue

logger = logging.getLogger(__name__)
T = TypeVar("T")
OutputFormat = Literal["json", "labels", "color", "overlay"]

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; style-src 'unsafe-inline'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
PNG_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {
    "required": True,
    "description": "The image (JPEG, PNG, WebP, BMP, TIFF, GIF, PPM or JPEG 2000): the 'file' "
                   "field of a multipart form, or the raw request body.",
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": PNG_SCHEMA,
        "application/octet-stream": PNG_SCHEMA,
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "JSON (format=json), or the PNG asked for: 'labels' (class ids, 8-bit, "
                         "16-bit for 256 classes or more), 'color' or 'overlay'",
          "content": {"image/png": PNG_SCHEMA}},
    400: _error("empty upload, or a malformed multipart form"),
    408: _error("the upload did not arrive within the timeout"),
    413: _error("upload larger than --max-upload-mb, or image of more than --max-pixels"),
    415: _error("not an image of a supported format"),
    422: _error("an image that cannot be decoded (truncated, corrupt), or a bad parameter"),
    503: _error("queue full or model loading: retry after the Retry-After header's seconds"),
    504: _error("no result within the timeout"),
}


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


class _ModelSlot:
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


def create_app(segmenter: SegmenterLike | None = None, *,
               loader: Callable[[], SegmenterLike] | None = None, limits: Limits | None = None,
               on_load_error: Callable[[Exception], None] | None = None) -> FastAPI:
    """The service around ``segmenter``, or around what ``loader`` returns: then the model is
    loaded on a thread at start-up, ``/v1/health`` answers 503 until it is ready, and
    ``on_load_error`` is called if loading fails."""
    if (segmenter is None) == (loader is None):
        raise ValueError("give either a segmenter or a loader")
    limits = limits or Limits()
    slot = _ModelSlot(segmenter)
    queue = InferenceQueue(limits.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if loader is not None:
            threading.Thread(target=slot.load, args=(loader, on_load_error), daemon=True,
                             name="vitadapter-load").start()
        yield
        queue.shutdown()

    app = FastAPI(title="vitadapter", version=__version__, lifespan=lifespan,
                  description="ViT-Adapter semantic segmentation (Mask2Former or UperNet) "
                              "over HTTP.")
    _add_error_handlers(app)
    _add_page(app)

    @app.get("/v1/health", response_model=HealthBody, summary="Readiness",
             responses={503: {"model": HealthBody, "description": "loading, or failed"}})
    async def health() -> JSONResponse:
        """200 once the model is loaded, 503 before (or if loading failed)."""
        body = {"status": "ok", "error": None, "in_progress": queue.in_progress}
        if slot.segmenter is not None:
            return JSONResponse(body)
        body.update(status="failed" if slot.error else "loading", error=slot.error)
        return JSONResponse(body, 503, headers={"Retry-After": "5"})

    @app.get("/v1/model", response_model=ModelBody, summary="The model and the limits",
             responses={503: _error("the model is not loaded yet")})
    async def model() -> dict[str, Any]:
        """The model being served (name, classes with their colours, slide windows, device,
        behaviour) and the limits requests are held to."""
        return _model_info(slot.require(), limits)

    @app.post("/v1/segment", response_model=SegmentBody, summary="Segment an image",
              responses=SEGMENT_RESPONSES, openapi_extra={"requestBody": UPLOAD_BODY})
    async def segment(
        request: Request,
        output: Annotated[OutputFormat, Query(
            alias="format", description="'json' (classes present, timing), or a PNG: "
                                        "'labels', 'color' or 'overlay'")] = "json",
        tta: Annotated[bool | None, Query(
            description="multi-scale + flip test-time augmentation (default: the server's "
                        "--tta)")] = None,
        alpha: Annotated[float, Query(ge=0, le=1, description="overlay opacity")] = 0.5,
        legend: Annotated[bool, Query(description="draw a legend beside the overlay")] = True,
        include_overlay: Annotated[bool, Query(
            description="format=json: add the overlay PNG as a data URL")] = False,
    ) -> Response | SegmentBody:
        """Segment the uploaded image. Requests beyond ``max_queue`` get 503 with Retry-After;
        each has ``timeout_seconds`` to be uploaded, wait and run (504 beyond)."""
        arrived = time.perf_counter()
        deadline = arrived + limits.timeout
        segmenter = slot.segmenter
        ticket = None if segmenter is None else queue.admit()
        if segmenter is None or ticket is None:
            refusal = slot.unavailable() if segmenter is None else ServiceError(
                503, f"busy: {queue.capacity} requests in progress; retry later",
                {"Retry-After": str(queue.retry_after())})
            with suppress(asyncio.TimeoutError):  # read the body, so the client gets the 503
                await asyncio.wait_for(
                    discard_body(request.stream(), limits.max_upload_bytes), limits.timeout)
            raise refusal
        use_tta = segmenter.tta if tta is None else tta
        submitted = False
        try:
            upload = _within(
                read_body(request.stream(), limits.max_upload_bytes), limits.timeout,
                ServiceError(408, f"the upload did not arrive within {limits.timeout:g} s"))
            # Off the event loop: parsing a 20 MB form takes tens of milliseconds. Only the
            # image is kept for the queue, not the whole body.
            data = await asyncio.to_thread(_checked_image, await upload,
                                           request.headers.get("content-type", ""), limits)
            render = partial(_render, output=output, alpha=alpha, legend=legend,
                             include_overlay=include_overlay)
            submitted = True
            queued = time.perf_counter()
            rendered, started, seconds = await _within(
                queue.run(ticket, partial(_segment, segmenter, data, use_tta, render)),
                deadline - queued,
                ServiceError(504, f"no result within the {limits.timeout:g} s timeout"))
        finally:
            if not submitted:
                ticket.release()
        if isinstance(rendered, bytes):
            return Response(rendered, media_type="image/png")
        now = time.perf_counter()
        return SegmentBody(**rendered, tta=use_tta, timing=Timing(
            queued_seconds=started - queued, inference_seconds=seconds,
            total_seconds=now - arrived))

    return app


async def _within(awaitable: Awaitable[T], seconds: float, error: ServiceError) -> T:
    """``awaitable``'s value, or ``error`` raised after ``seconds``."""
    try:
        return await asyncio.wait_for(awaitable, max(seconds, 0.0))
    except asyncio.TimeoutError:
        raise error from None


def _checked_image(body: bytes, content_type: str, limits: Limits) -> bytes:
    data = image_bytes(body, content_type)
    check_image(data, limits.max_pixels)
    return data


def _segment(segmenter: SegmenterLike, data: bytes, tta: bool,
             render: Callable[[SegmentationResult], bytes | dict[str, Any]],
             ) -> tuple[bytes | dict[str, Any], float, float]:
    """On the inference thread: decode, segment, render; with the start time and duration."""
    start = time.perf_counter()
    try:
        result = segmenter.segment(decode_image(data, "the upload"), tta=tta)
    except ImageError as exc:
        raise ServiceError(422, str(exc)) from None
    return render(result), start, time.perf_counter() - start


def _render(result: SegmentationResult, output: OutputFormat, alpha: float, legend: bool,
            include_overlay: bool) -> bytes | dict[str, Any]:
    """The PNG asked for, or the JSON answer's fields but timing and tta."""
    images: dict[str, Callable[[], Image.Image]] = {
        "labels": result.label_image,
        "color": lambda: Image.fromarray(result.colorize()),
        "overlay": lambda: Image.fromarray(result.overlay(alpha, legend=legend)),
    }
    if output != "json":
        return _png(images[output]())
    overlay = None
    if include_overlay:
        overlay = "data:image/png;base64," + base64.b64encode(_png(images["overlay"]())).decode()
    height, width = result.label_map.shape
    return {"model": result.model, "width": width, "height": height,
            "classes": result.summary(), "overlay": overlay}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _model_info(segmenter: SegmenterLike, limits: Limits) -> dict[str, Any]:
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
                   "timeout_seconds": limits.timeout},
    }


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``, FastAPI's and Starlette's own included."""

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                            for e in exc.errors())
        return JSONResponse({"error": message}, 422)

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this, so the server logs the traceback.
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the "
                                      "server log"}, 500)

    async def gone(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "the client disconnected"}, 400)

    app.add_exception_handler(ServiceError, refused)
    app.add_exception_handler(ClientDisconnect, gone)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, failed)


def _add_page(app: FastAPI) -> None:
    """``GET /``: the page to try the service (plain HTML + JS from the package data)."""
    static = resources.files(__package__).joinpath("static")
    page = static.joinpath("index.html").read_text(encoding="utf-8")
    script = static.joinpath("app.js").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/app.js", include_in_schema=False)
    async def app_js() -> Response:
        return Response(script, media_type="text/javascript", headers=PAGE_HEADERS)

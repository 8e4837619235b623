"""The FastAPI application: ``create_app(segmenter)`` or ``create_app(loader=...)``.

Endpoints: ``POST /v1/segment``, ``GET /v1/health``, ``GET /v1/model``, ``GET /`` (a page to
try it) and the OpenAPI schema at ``/openapi.json`` (browsable at ``/docs``). Every refusal is
a 4xx/5xx status with ``{"error": message}`` (:mod:`.errors`). The routes are here; the model's
state is in :mod:`.state`, what they answer in :mod:`.render`, the upload checks in
:mod:`.uploads` and the inference thread in :mod:`.worker`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from importlib import resources
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .access import Access, add_access_control
from .errors import ServiceError, add_error_handlers
from .openapi import SEGMENT_RESPONSES, UPLOAD_BODY, error_response
from .render import OutputFormat, model_info, render, segment_and_render
from .schemas import HealthBody, ModelBody, SegmentBody, Timing
from .state import Limits, ModelSlot, SegmenterLike
from .uploads import checked_image, discard_body, read_body
from .worker import InferenceQueue, Ticket

__all__ = ["Access", "Limits", "SegmenterLike", "create_app"]

T = TypeVar("T")

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def create_app(segmenter: SegmenterLike | None = None, *,
               loader: Callable[[], SegmenterLike] | None = None, limits: Limits | None = None,
               on_load_error: Callable[[Exception], None] | None = None,
               access: Access | None = None) -> FastAPI:
    """The service around ``segmenter``, or around what ``loader`` returns: then the model is
    loaded on a thread at start-up, ``/v1/health`` answers 503 until it is ready, and
    ``on_load_error`` is called if loading fails. ``access``: an optional API key and the
    other sites allowed to call it (:class:`Access`; by default no key, same origin only)."""
    if (segmenter is None) == (loader is None):
        raise ValueError("give either a segmenter or a loader")
    limits = limits or Limits()
    slot = ModelSlot(segmenter)
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
                              "over HTTP.",
                  docs_url=None, redoc_url=None)
    add_error_handlers(app)
    add_access_control(app, access or Access())
    _add_page(app)
    _add_docs(app)

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
             responses={503: error_response("the model is not loaded yet")})
    async def model() -> dict[str, Any]:
        """The model being served (name, classes with their colours, slide windows, device,
        behaviour) and the limits requests are held to."""
        return model_info(slot.require(), limits)

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
        each has ``upload_timeout_seconds`` to be uploaded (408 beyond) and
        ``timeout_seconds`` in all to be uploaded, wait and run (504 beyond)."""
        arrived = time.perf_counter()
        segmenter, ticket = await _admit(request, slot, queue, limits)
        use_tta = segmenter.tta if tta is None else tta
        job = partial(segment_and_render, segmenter, tta=use_tta,
                      render=partial(render, output=output, alpha=alpha, legend=legend,
                                     include_overlay=include_overlay))
        rendered, queued, started, seconds = await _run(request, ticket, queue, limits,
                                                        arrived, job)
        if isinstance(rendered, bytes):
            return Response(rendered, media_type="image/png")
        return SegmentBody(**rendered, tta=use_tta, timing=Timing(
            queued_seconds=started - queued, inference_seconds=seconds,
            total_seconds=time.perf_counter() - arrived))

    return app


async def _admit(request: Request, slot: ModelSlot, queue: InferenceQueue,
                 limits: Limits) -> tuple[SegmenterLike, Ticket]:
    """The model and a place in the queue, or the refusal (503) once the body is read, so
    that the client, still sending, receives it."""
    segmenter = slot.segmenter
    ticket = None if segmenter is None else queue.admit()
    if segmenter is not None and ticket is not None:
        return segmenter, ticket
    refusal = slot.unavailable() if segmenter is None else ServiceError(
        503, f"busy: {queue.capacity} requests in progress; retry later",
        {"Retry-After": str(queue.retry_after())})
    with suppress(asyncio.TimeoutError):
        await asyncio.wait_for(discard_body(request.stream(), limits.max_upload_bytes),
                               limits.upload_deadline)
    raise refusal


async def _run(request: Request, ticket: Ticket, queue: InferenceQueue, limits: Limits,
               arrived: float, job: Callable[..., tuple[Any, float, float]],
               ) -> tuple[Any, float, float, float]:
    """Receive and check the upload, then run ``job(data)`` on the inference thread within
    the request's timeout: (rendered, queued at, started at, inference seconds)."""
    submitted = False
    try:
        upload = _within(
            read_body(request.stream(), limits.max_upload_bytes), limits.upload_deadline,
            ServiceError(408, f"the upload did not arrive within {limits.upload_deadline:g} "
                              "s (--upload-timeout)"))
        # Off the event loop: parsing a 20 MB form takes tens of milliseconds. Only the image
        # is kept for the queue, not the whole body.
        data = await asyncio.to_thread(checked_image, await upload,
                                       request.headers.get("content-type", ""),
                                       limits.max_pixels)
        submitted = True
        queued = time.perf_counter()
        rendered, started, seconds = await _within(
            queue.run(ticket, partial(job, data)), arrived + limits.timeout - queued,
            ServiceError(504, f"no result within the {limits.timeout:g} s timeout"))
    finally:
        if not submitted:
            ticket.release()
    return rendered, queued, started, seconds


async def _within(awaitable: Awaitable[T], seconds: float, error: ServiceError) -> T:
    """``awaitable``'s value, or ``error`` raised after ``seconds``."""
    try:
        return await asyncio.wait_for(awaitable, max(seconds, 0.0))
    except asyncio.TimeoutError:
        raise error from None


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


def _add_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI with its assets served from here (the copy of Swagger UI 5
    that the fastapi-offline package ships), so it works offline; no CDN is contacted."""
    assets = resources.files("fastapi_offline").joinpath("static")
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title="vitadapter API",
                                   swagger_js_url="docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="docs-assets/swagger-ui.css",
                                   swagger_favicon_url="docs-assets/favicon.png")

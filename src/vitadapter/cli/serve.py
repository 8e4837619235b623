"""``vitadapter serve``: the model over HTTP (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from ..errors import VitAdapterError
from .common import add_model_arguments, segmenter_from_args

INSTALL_HINT = "pip install 'vitadapter[serve]'"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the model over HTTP",
        description="Serve the model over HTTP: POST /v1/segment, GET /v1/health, "
                    "GET /v1/model, a page to try it at / and the OpenAPI schema at /docs. "
                    f"Needs the serve extra ({INSTALL_HINT}).")
    add_model_arguments(p)
    service = p.add_argument_group("service")
    service.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    service.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    service.add_argument("--max-queue", type=_positive(int), default=8, metavar="N",
                         help="requests admitted at once, uploading, waiting or running; "
                              "beyond, 503 with Retry-After (default 8)")
    service.add_argument("--max-pixels", type=_positive(int), default=40_000_000, metavar="N",
                         help="largest image in pixels, read from its header before "
                              "decoding; beyond, 413 (default 40000000)")
    service.add_argument("--max-upload-mb", type=_positive(float), default=20.0, metavar="MB",
                         help="largest request body in MiB; beyond, 413 (default 20)")
    service.add_argument("--timeout", type=_positive(float), default=600.0, metavar="S",
                         help="seconds per request to upload, wait and run; beyond, 504 "
                              "(default 600: a full-size model needs minutes per photo "
                              "on a CPU)")
    service.add_argument("--upload-timeout", type=_positive(float), default=60.0, metavar="S",
                         help="seconds for the upload alone, while it holds a place in the "
                              "queue; beyond, 408 (default 60: slow clients cannot keep "
                              "every place for --timeout)")
    service.add_argument("--api-key", default=None, metavar="KEY",
                         help="require this key (Authorization: Bearer KEY or X-API-Key: KEY) "
                              "for /v1/segment and /v1/model; default: no authentication, "
                              "so keep the server on loopback or behind a proxy that has it. "
                              "Also read from $VITADAPTER_API_KEY")
    service.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                         help="another site (https://example.org) whose pages may call the "
                              "API; repeat for more (default: none, same origin only)")
    p.set_defaults(run=run)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: ``kind`` values above zero."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi_offline  # noqa: F401  (Swagger UI's assets, for /docs offline)
        import uvicorn

        from ..serve.app import Access, Limits, create_app
    except ImportError as exc:
        raise VitAdapterError(f"'vitadapter serve' needs the serve extra ({exc.name} is not "
                              f"installed): {INSTALL_HINT}") from None
    limits = Limits(max_queue=args.max_queue, max_pixels=args.max_pixels,
                    max_upload_bytes=int(args.max_upload_mb * 2**20), timeout=args.timeout,
                    upload_timeout=args.upload_timeout)
    failures: list[Exception] = []

    def stop(exc: Exception) -> None:  # called from the loading thread, once serving
        failures.append(exc)
        server.should_exit = True

    access = Access(api_key=args.api_key or os.environ.get("VITADAPTER_API_KEY") or None,
                    allowed_origins=tuple(args.allow_origin))
    app = create_app(loader=lambda: segmenter_from_args(args), limits=limits,
                     on_load_error=stop, access=access)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
        timeout_keep_alive=5))
    server.run()
    if failures:
        raise VitAdapterError(f"the model could not be loaded: {failures[0]}")
    return 0

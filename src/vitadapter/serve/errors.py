"""Refusals: :class:`ServiceError`, and the handlers that answer every error (FastAPI's and
Starlette's own included) as ``{"error": message}``."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect


class ServiceError(Exception):
    """A request the service refuses: HTTP status, message for ``{"error": ...}``, headers."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``."""

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

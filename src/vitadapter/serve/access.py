"""Who may use the service. By default anyone who can reach it (it listens on loopback): an
optional API key for ``/v1/segment`` and ``/v1/model``, and cross-origin requests that change
something (a form posted by another site's page) refused unless their origin is allowed."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

OPEN_PATHS = ("/", "/app.js", "/v1/health", "/docs", "/openapi.json")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Access:
    """``api_key``: required as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``;
    ``allowed_origins``: other sites whose pages may call the API (CORS)."""

    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()

    def refusal(self, request: Request) -> tuple[int, str] | None:
        origin = request.headers.get("origin")
        if (request.method not in SAFE_METHODS and origin is not None
                and origin != _own_origin(request) and origin not in self.allowed_origins):
            return 403, (f"cross-origin request from {origin} refused; the server's "
                         "--allow-origin lists the sites allowed to call it")
        path = request.url.path
        if self.api_key and not (path in OPEN_PATHS or path.startswith("/docs-assets/")):
            given = request.headers.get("x-api-key") or _bearer(request)
            if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, ("this server needs an API key: send it as 'Authorization: "
                             "Bearer KEY' or 'X-API-Key: KEY'")
        return None


def add_access_control(app: FastAPI, access: Access) -> None:
    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refused = access.refusal(request)
        if refused is not None:
            status, message = refused
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"error": message}, status, headers=headers)
        return await call_next(request)

    if access.allowed_origins:
        # Added last, so outermost: it answers the pre-flight (OPTIONS, which browsers send
        # without the key) before the guard, and puts its headers on the guard's refusals too,
        # so that an allowed page can read why it was refused.
        app.add_middleware(CORSMiddleware, allow_origins=list(access.allowed_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"])


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None

"""The service's optional API key and allowed origins (in-process, quick backend)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from .conftest import PHOTO
from .quick_runner import quick_segmenter

pytest.importorskip("fastapi", reason="the serve extra is missing: pip install -e '.[test,serve]'")

from fastapi.testclient import TestClient

from vitadapter.serve.app import Access, create_app


def photo_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).save(buffer, format="PNG")
    return buffer.getvalue()


def client(access: Access) -> TestClient:
    return TestClient(create_app(quick_segmenter(), access=access))


def test_no_key_and_same_origin_by_default():
    with client(Access()) as c:
        assert c.get("/v1/model").status_code == 200
        answer = c.post("/v1/segment", content=photo_bytes(),
                        headers={"Origin": "http://evil.example"})
        assert answer.status_code == 403
        assert answer.json() == {"error": "cross-origin request from http://evil.example "
                                          "refused; the server's --allow-origin lists the "
                                          "sites allowed to call it"}
        same = c.post("/v1/segment", content=photo_bytes(),
                      headers={"Origin": "http://testserver"})
        assert same.status_code == 200


def test_api_key():
    with client(Access(api_key="s3cret")) as c:
        refused = c.get("/v1/model")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "needs an API key" in refused.json()["error"]
        assert c.post("/v1/segment", content=photo_bytes()).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/segment", content=photo_bytes(),
                      headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/health").status_code == 200 and c.get("/").status_code == 200


def test_allowed_origin_gets_cors():
    with client(Access(allowed_origins=("https://app.example",))) as c:
        answer = c.post("/v1/segment", content=photo_bytes(),
                        headers={"Origin": "https://app.example"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert c.post("/v1/segment", content=photo_bytes(),
                      headers={"Origin": "https://other.example"}).status_code == 403


def test_the_cors_preflight_of_an_allowed_page_needs_no_key():
    page = "https://app.example"
    with client(Access(api_key="s3cret", allowed_origins=(page,))) as c:
        preflight = c.options("/v1/segment", headers={
            "Origin": page, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == page
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        # the page can read why a request without the key was refused ...
        refused = c.post("/v1/segment", content=photo_bytes(), headers={"Origin": page})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == page
        # ... and with the key it is served
        served = c.post("/v1/segment", content=photo_bytes(),
                        headers={"Origin": page, "Authorization": "Bearer s3cret"})
        assert served.status_code == 200
        assert served.headers["access-control-allow-origin"] == page
        # another site's pre-flight gets no CORS headers, its request still 403
        other = c.options("/v1/segment", headers={
            "Origin": "https://other.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        assert c.post("/v1/segment", content=photo_bytes(), headers={
            "Origin": "https://other.example", "Authorization": "Bearer s3cret"}
                      ).status_code == 403

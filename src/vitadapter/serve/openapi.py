"""What the OpenAPI schema says beyond the routes' signatures: the upload body and the
answers of ``POST /v1/segment``."""

from __future__ import annotations

from typing import Any

from .schemas import ErrorBody

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


def error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "JSON (format=json), or the PNG asked for: 'labels' (class ids, 8-bit, "
                         "16-bit for 256 classes or more), 'color' or 'overlay'",
          "content": {"image/png": PNG_SCHEMA}},
    400: error_response("empty upload, or a malformed multipart form"),
    408: error_response("the upload did not arrive within the timeout"),
    413: error_response("upload larger than --max-upload-mb, or image of more than "
                        "--max-pixels"),
    415: error_response("not an image of a supported format"),
    422: error_response("an image that cannot be decoded (truncated, corrupt), or a bad "
                        "parameter"),
    503: error_response("queue full or model loading: retry after the Retry-After header's "
                        "seconds"),
    504: error_response("no result within the timeout"),
}

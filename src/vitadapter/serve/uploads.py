"""Taking an uploaded image in safely, before any decoder sees it.

The request body is read into memory with a size cap, a multipart form is parsed in memory
(nothing is spooled to a temporary file, no client-supplied name is used), and the pixel count
is read from the image header, without decoding, and checked against the limit.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ServiceError

# Formats Pillow identifies from their header (JPEG covers MPO) and OpenCV or Pillow decode.
# Anything else (Radiance HDR, OpenEXR, EPS, ...) is refused before a decoder sees it.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "JPEG2000")
# An oversized body is read on (and dropped) up to this multiple of the limit, so that the
# client, still sending, receives the 413 instead of a reset connection.
DRAIN_FACTOR = 4


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; beyond it the rest is drained and 413
    raised."""
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size <= limit:
            kept.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise ServiceError(413, f"the upload is larger than the limit of {limit} bytes "
                                "(--max-upload-mb)")
    return b"".join(kept)


async def discard_body(chunks: AsyncIterator[bytes], limit: int) -> None:
    """Read and drop the body of a request refused before reading it (up to
    ``DRAIN_FACTOR * limit`` bytes)."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > DRAIN_FACTOR * limit:
            break


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The encoded image of a request: the ``file`` field (or the first part with a file name)
    of a ``multipart/form-data`` body, otherwise the raw body."""
    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        return body
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError(400, "multipart/form-data without a boundary")
    form = _Form()
    parser = MultipartParser(boundary, form.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ServiceError(400, f"malformed multipart body: {exc}") from None
    return form.file()


class _Form:
    """The parts of a multipart body, collected in memory: disposition parameters and data."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[bytes, bytes], bytearray]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._disposition: dict[bytes, bytes] = {}
        self._data = bytearray()

    def callbacks(self) -> Any:
        def part_begin() -> None:
            self._disposition, self._data = {}, bytearray()

        def header_field(data: bytes, start: int, end: int) -> None:
            self._field += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def header_end() -> None:
            if self._field.lower() == b"content-disposition":
                self._disposition = parse_options_header(bytes(self._value))[1]
            self._field, self._value = bytearray(), bytearray()

        def part_data(data: bytes, start: int, end: int) -> None:
            self._data += data[start:end]

        def part_end() -> None:
            self.parts.append((self._disposition, self._data))

        return {"on_part_begin": part_begin, "on_header_field": header_field,
                "on_header_value": header_value, "on_header_end": header_end,
                "on_part_data": part_data, "on_part_end": part_end}

    def file(self) -> bytes:
        named = [data for params, data in self.parts if params.get(b"name") == b"file"]
        files = [data for params, data in self.parts if b"filename" in params]
        if not named and not files:
            raise ServiceError(400, "the multipart form has no 'file' field")
        return bytes((named or files)[0])


def checked_image(body: bytes, content_type: str, max_pixels: int) -> bytes:
    """The image of a request body, checked by :func:`check_image`."""
    data = image_bytes(body, content_type)
    check_image(data, max_pixels)
    return data


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse empty data, data that is not an image of :data:`IMAGE_FORMATS`, and images of
    more than ``max_pixels`` pixels, from the header alone (Pillow opens lazily)."""
    if not data:
        raise ServiceError(400, "empty upload: send an image")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, f"too many pixels: {exc}") from None
    except Exception as exc:  # Pillow's plugins raise many kinds on garbage
        kind = signature_format(data)
        if kind is not None:  # the start of a supported image, cut short or damaged
            raise ServiceError(422, f"a {kind} image that is truncated or damaged: its header "
                                    f"cannot be read ({exc})") from None
        raise ServiceError(415, "not an image of a supported format (JPEG, PNG, WebP, BMP, "
                                "TIFF, GIF, PPM or JPEG 2000)") from None
    if width * height > max_pixels:
        raise ServiceError(413, f"the image has {width}x{height} = {width * height} pixels, "
                                f"more than the limit of {max_pixels} (--max-pixels)")


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def signature_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any (the first bytes of
    a file, which a truncated upload still has)."""
    for prefix, kind in _SIGNATURES:
        if data.startswith(prefix):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and len(data) >= 6:
        return "BMP"
    if len(data) >= 3 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "PPM"
    return None

"""Reading images of every kind (paths, bytes, URLs, PIL images, arrays, tensors) into RGB uint8
arrays. numpy + OpenCV + Pillow only, so the ONNX backend shares it."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

ChannelOrder = Literal["rgb", "bgr"]
MAX_DOWNLOAD_BYTES = 200 * 2**20


def load_image(image: Any, *, channel_order: ChannelOrder = "rgb",
               exif: bool = True) -> np.ndarray:
    """Any supported input as an (H, W, 3) uint8 RGB array.

    Accepted: a path or ``http(s)://`` URL; encoded bytes or a file object (``open(...,
    "rb")``, ``io.BytesIO``); a ``PIL.Image`` in any mode (EXIF orientation
    applied; alpha dropped as OpenCV and ModelScope do; 16-bit reduced to 8-bit); a numpy
    array (H, W, 3|4) or (H, W) of uint8 (uint16, bool, and float in [0, 1] are converted) in
    RGB order, or BGR with ``channel_order="bgr"`` (arrays from OpenCV); a torch tensor
    (C, H, W) or (1, C, H, W), uint8 0..255 or float 0..1, in the same channel order.

    Encoded images and PIL images are turned upright by their EXIF orientation, as a photo
    viewer shows them; ``exif=False`` keeps the stored pixels (dataset images: their
    annotations were drawn on those). Errors name the image first (``<path>: ...``).
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if isinstance(image, str | Path):
        text = str(image)
        if text.startswith(("http://", "https://")):
            return decode_image(_download(text), text, exif=exif)
        return read_image_file(Path(text), exif=exif)
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), "the image bytes", exif=exif)
    if hasattr(image, "read"):  # an open file or io.BytesIO
        return decode_image(image.read(), str(getattr(image, "name", "the file object")),
                            exif=exif)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image, exif=exif)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image, channel_order)
    if type(image).__module__.split(".")[0] == "torch":  # no torch import for the ONNX path
        return _tensor_to_rgb(image, channel_order)
    raise ImageError(f"unsupported image type {type(image).__name__}: pass a path, a URL, "
                     "bytes, a file object, a PIL image, an (H, W, 3) uint8 array or a "
                     "(3, H, W) tensor")


def read_image_file(path: Path, *, exif: bool = True) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return decode_image(data, str(path), exif=exif)


def decode_image(data: bytes, name: str, *, exif: bool = True) -> np.ndarray:
    """Decode encoded image bytes to RGB. OpenCV first (what the official code uses, EXIF
    orientation applied unless ``exif=False``), Pillow for formats OpenCV lacks."""
    if not data:
        raise ImageError(f"{name}: empty file, not an image")
    buffer = np.frombuffer(data, np.uint8)
    flags = cv2.IMREAD_COLOR if exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        decoded = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # e.g. a header declaring more pixels than OpenCV allows
        raise ImageError(f"{name}: OpenCV cannot decode it ({getattr(exc, 'err', exc)})"
                         ) from None
    if decoded is not None:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return pil_to_rgb(img, exif=exif)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (unknown format, or damaged)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    except Exception as exc:  # Pillow's plugins raise many kinds (decompression bombs, ...)
        raise ImageError(f"{name}: not a readable image ({type(exc).__name__}: {exc})"
                         ) from None


def check_pixels(path: Path, max_pixels: int) -> None:
    """Refuse an image file whose header declares more than ``max_pixels`` pixels, before
    anything decodes it (formats Pillow cannot identify are left to the decoders)."""
    try:
        with warnings.catch_warnings():  # our own limit decides, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too many pixels ({exc})") from None
    except Exception:  # unknown to Pillow, or unreadable: decoding will say what is wrong
        return
    if width * height > max_pixels:
        raise ImageError(f"{path}: {width}x{height} = {width * height} pixels, more than "
                         f"--max-pixels {max_pixels}; raise it to segment this photo")


def pil_to_rgb(img: Image.Image, *, exif: bool = True) -> np.ndarray:
    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        gray = _to_uint8(arr)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def array_to_rgb(arr: np.ndarray, channel_order: ChannelOrder = "rgb") -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ImageError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    arr = _to_uint8(arr)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    return np.ascontiguousarray(arr[:, :, ::-1] if channel_order == "bgr" else arr)


def _tensor_to_rgb(tensor: Any, channel_order: ChannelOrder) -> np.ndarray:
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
        raise ImageError(f"expected a (3, H, W) image tensor, got shape {tuple(tensor.shape)}"
                         + ("; use tensor.permute(2, 0, 1) for (H, W, 3)"
                            if tensor.dim() == 3 and tensor.shape[-1] in (3, 4) else ""))
    return array_to_rgb(tensor.detach().cpu().permute(1, 2, 0).numpy(), channel_order)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.uint32, np.int64) and arr.size:
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"integer image values must lie in 0..65535, got "
                             f"{arr.min()}..{arr.max()}")
        return (arr.astype(np.uint32) >> 8).astype(np.uint8) if arr.max() > 255 else \
            arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ImageError("float images must hold values in [0, 1]; convert 0..255 data "
                             "to uint8 first")
        return np.round(arr * 255).astype(np.uint8)
    raise ImageError(f"unsupported image dtype {arr.dtype}")


def _download(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "vitadapter"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"could not download {url}: {reason} (offline? download it yourself "
                         "and pass the local file)") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageError(f"{url}: larger than {MAX_DOWNLOAD_BYTES // 2**20} MB")
    return data

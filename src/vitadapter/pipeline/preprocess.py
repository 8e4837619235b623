"""The test-time preprocessing of a photo into normalised views, for either pipeline.

numpy + OpenCV + Pillow only (no torch import), so the ONNX backend shares it.

``pipeline="mmseg"`` reproduces mmseg's test pipeline step by step: keep-ratio ``Resize`` (mmcv
``imrescale``, OpenCV bilinear on uint8), ``ResizeToMultiple`` (a second bilinear resize up to a
multiple of ``size_divisor``), optional horizontal flip, ``PadShortSide`` (bottom/right zeros up
to the crop), ``Normalize`` on 0..255 RGB values; with TTA, the official scales and flips.

``pipeline="dinov3"`` reproduces Meta's DINOv3 evaluation transforms: ``FixedSideResize`` (the
short side to ``short_side``, the long side in proportion rounded half up, by Pillow's bilinear
``Image.resize`` on the uint8 image, as torchvision's ``Resize`` does on a PIL image), no padding,
torchvision's ``Normalize`` (``(x - mean) / std`` in float32); with TTA, every ratio's view and
then all of them mirrored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..config.schema import InferenceConfig
from ..errors import ImageError


@dataclass(frozen=True)
class View:
    """One preprocessed version of a photo (one test-time augmentation)."""

    image: np.ndarray              # (3, H, W) float32, normalised (mmseg: padded to >= crop)
    valid_shape: tuple[int, int]   # (h, w) before padding (mmseg's img_shape)
    original_shape: tuple[int, int]
    flipped: bool = False


def rescale_size(height: int, width: int, img_scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest keep-ratio size within (long, short) = img_scale,
    rounded half up. Returns (new_height, new_width)."""
    long_edge, short_edge = max(img_scale), min(img_scale)
    scale = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * float(scale) + 0.5), int(width * float(scale) + 0.5)


def preprocess(rgb: np.ndarray, cfg: InferenceConfig, *, ratio: float = 1.0,
               flip: bool = False) -> View:
    """The official test transforms for one scale ``ratio`` of ``cfg.img_scale``."""
    height, width = rgb.shape[:2]
    img_scale = (int(max(cfg.img_scale) * ratio), int(min(cfg.img_scale) * ratio))
    new_h, new_w = rescale_size(height, width, img_scale)
    if min(new_h, new_w) < 1:
        raise ImageError(f"image of {width}x{height} pixels is too thin to resize")
    img = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    divisor = cfg.size_divisor
    multiple = (math.ceil(new_w / divisor) * divisor, math.ceil(new_h / divisor) * divisor)
    img = cv2.resize(img, multiple, interpolation=cv2.INTER_LINEAR)
    if flip:
        img = np.ascontiguousarray(img[:, ::-1])
    valid = img.shape[:2]
    crop_h, crop_w = cfg.crop_size
    if valid[0] < crop_h or valid[1] < crop_w:  # PadShortSide: raw zeros, bottom/right
        padded = np.zeros((max(valid[0], crop_h), max(valid[1], crop_w), 3), np.uint8)
        padded[:valid[0], :valid[1]] = img
        img = padded
    return View(normalize(img, cfg), (int(valid[0]), int(valid[1])), (height, width), flip)


def normalize(rgb: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """mmcv ``imnormalize`` on an RGB uint8 image, returned channels-first: OpenCV 4's
    arithmetic, as the official code ran it, spelled out in numpy (OpenCV 5 rounds the scalar
    to float32 first, which moves a quarter of the values by one ulp): ``x - mean`` in
    float32, then the float64 product with ``1 / std`` rounded to float32."""
    img = rgb.astype(np.float32)
    if not cfg.to_rgb:
        img = img[:, :, ::-1]
    # mmseg stores mean/std as float32 before mmcv widens them to float64.
    img -= np.asarray(cfg.mean, np.float32)
    stdinv = 1 / np.asarray(cfg.std, np.float32).astype(np.float64)
    out = np.empty((img.shape[2], *img.shape[:2]), np.float32)
    np.multiply(img.transpose(2, 0, 1), stdinv[:, None, None], out=out, dtype=np.float64,
                casting="same_kind")
    return out


def fixed_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Meta's ``FixedSideResize``: the short side (the height of a square) becomes
    ``short_side``, the long side ``int(short_side * long / short + 0.5)``. (height, width)."""
    if height > width:
        return int(short_side * height / width + 0.5), short_side
    return short_side, int(short_side * width / height + 0.5)


def tta_short_sides(cfg: InferenceConfig) -> list[int]:
    """Meta's TTA short sides: ``int(short_side * r)`` per ratio, rounded up to a multiple of
    ``size_divisor`` (Meta: 32, not scaled with the crop) for ratios below 1."""
    assert cfg.short_side is not None  # the config's validation requires it here
    sides = []
    for ratio in cfg.tta_ratios:
        side = int(cfg.short_side * ratio)
        if ratio < 1:
            side = math.ceil(side / cfg.size_divisor) * cfg.size_divisor
        sides.append(side)
    return sides


def fixed_side_view(rgb: np.ndarray, cfg: InferenceConfig, short_side: int,
                    flip: bool = False) -> View:
    """Meta's test transforms for one short side: PIL bilinear resize of the uint8 image,
    optional mirror, ``(x - mean) / std`` in float32; no padding."""
    height, width = rgb.shape[:2]
    new_h, new_w = fixed_side_size(height, width, short_side)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and new_h * new_w > limit:  # Meta's resize has no long-side cap
        raise ImageError(f"an image of {width}x{height} pixels becomes {new_w}x{new_h} with "
                         f"its short side at {short_side}: too elongated (over Pillow's "
                         f"{limit} pixels); crop it first")
    img = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    if flip:
        img = img[:, ::-1]
    planes = img.transpose(2, 0, 1).astype(np.float32)
    mean = np.asarray(cfg.mean, np.float32)[:, None, None]
    std = np.asarray(cfg.std, np.float32)[:, None, None]
    return View((planes - mean) / std, (new_h, new_w), (height, width), flip)


def augmented_views(rgb: np.ndarray, cfg: InferenceConfig, tta: bool = False) -> list[View]:
    """The single-scale view, or the pipeline's multi-scale + flip set: mmseg's
    ``MultiScaleFlipAug`` (scales outer, flips inner), or Meta's (every ratio, then every
    ratio mirrored)."""
    if cfg.pipeline == "dinov3":
        assert cfg.short_side is not None  # the config's validation requires it here
        if not tta:
            return [fixed_side_view(rgb, cfg, cfg.short_side)]
        sides = tta_short_sides(cfg)
        flips = (False, True) if cfg.tta_flip else (False,)
        return [fixed_side_view(rgb, cfg, s, flip=f) for f in flips for s in sides]
    if not tta:
        return [preprocess(rgb, cfg)]
    flips = (False, True) if cfg.tta_flip else (False,)
    return [preprocess(rgb, cfg, ratio=r, flip=f) for r in cfg.tta_ratios for f in flips]

"""The mmseg 0.x training pipeline on numpy arrays, every random draw from one generator.

Order (the official Mask2Former configs): ``Resize`` (a ratio in ``ratio_range`` of
``img_scale``, keep-ratio, mmcv rescale rounding; bilinear for the image, nearest for the
labels), ``RandomCrop`` (``cat_max_ratio``: up to 10 redraws while one class covers that share
of the crop or more), ``RandomFlip`` (horizontal, p 0.5), ``PhotoMetricDistortion``,
``Normalize``, ``Pad`` to the crop (image 0, labels 255). The draws come from a
:class:`numpy.random.Generator` in that order; the caller seeds it per sample (see
:mod:`vitadapter.data.train`), so a sample's augmentation depends on neither worker nor rank.
Images are RGB (mmseg's are BGR, converted by Normalize; the hue/saturation steps are the same
on either order).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config.schema import InferenceConfig
from ..pipeline.preprocess import normalize, rescale_size
from .datasets import IGNORE_INDEX


@dataclass(frozen=True)
class TrainPipelineConfig:
    """Augmentation settings; the defaults are the official ones (img_scale and crop come from
    the model's config)."""

    img_scale: tuple[int, int]  # (long side cap, short side target) at ratio 1
    crop: int
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18


def random_resize(img: np.ndarray, label: np.ndarray, img_scale: tuple[int, int],
                  ratio_range: tuple[float, float], rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``."""
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    scale = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    height, width = img.shape[:2]
    new_h, new_w = rescale_size(height, width, scale)
    if min(new_h, new_w) < 1:
        raise ValueError(f"resized to the scale {scale} (ratio {ratio:.3f} of {img_scale}) it "
                         f"would be {new_w}x{new_h} pixels")
    img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    return img, label


def _crop_box(shape: tuple[int, ...], crop: int, rng: np.random.Generator
              ) -> tuple[int, int, int, int]:
    margin_h, margin_w = max(shape[0] - crop, 0), max(shape[1] - crop, 0)
    top = int(rng.integers(0, margin_h + 1))
    left = int(rng.integers(0, margin_w + 1))
    return top, top + crop, left, left + crop


def random_crop(img: np.ndarray, label: np.ndarray, crop: int, cat_max_ratio: float,
                rng: np.random.Generator, ignore_index: int = IGNORE_INDEX
                ) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop``: a crop box (clipped to the image), redrawn up to 10 times while
    the crop holds fewer than two labelled classes or one covers ``cat_max_ratio`` or more of
    its labelled pixels; the last draw is kept."""
    box = _crop_box(img.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            top, bottom, left, right = box
            values, counts = np.unique(label[top:bottom, left:right], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(img.shape, crop, rng)
    top, bottom, left, right = box
    return img[top:bottom, left:right], label[top:bottom, left:right]


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(values * alpha + beta, 0, 255)`` in float32, truncated to uint8 (mmseg)."""
    out = values.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_distortion(img: np.ndarray, cfg: TrainPipelineConfig,
                           rng: np.random.Generator) -> np.ndarray:
    """mmseg 0.x ``PhotoMetricDistortion`` on a uint8 image: brightness, then contrast either
    first (mode 1) or last (mode 0), saturation and hue in HSV; each step with p 0.5."""

    def brightness(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            delta = rng.uniform(-cfg.brightness_delta, cfg.brightness_delta)
            return _convert(x, beta=delta)
        return x

    def contrast(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(x, alpha=rng.uniform(*cfg.contrast_range))
        return x

    def saturation(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*cfg.saturation_range))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return x

    def hue(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            shift = int(rng.integers(-cfg.hue_delta, cfg.hue_delta))
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + shift) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return x

    img = brightness(img)
    mode = rng.integers(2)
    if mode == 1:
        img = contrast(img)
    img = hue(saturation(img))
    if mode == 0:
        img = contrast(img)
    return img


def pad_to(img: np.ndarray, label: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``Pad(size=crop)``: bottom/right, image (C, H, W) with 0, labels with 255."""
    height, width = label.shape
    if height >= crop and width >= crop:
        return img, label
    padded = np.zeros((img.shape[0], max(height, crop), max(width, crop)), img.dtype)
    padded[:, :height, :width] = img
    labels = np.full(padded.shape[1:], IGNORE_INDEX, label.dtype)
    labels[:height, :width] = label
    return padded, labels


def train_transform(rgb: np.ndarray, label: np.ndarray, cfg: TrainPipelineConfig,
                    norm: InferenceConfig, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: (3, crop, crop) float32 normalised image and (crop, crop) uint8
    labels (255 = ignore), from an RGB uint8 image and its train-id label map."""
    img, label = random_resize(rgb, label, cfg.img_scale, cfg.ratio_range, rng)
    img, label = random_crop(img, label, cfg.crop, cfg.cat_max_ratio, rng)
    if rng.random() < cfg.flip_prob:
        img, label = img[:, ::-1], label[:, ::-1]
    img = photometric_distortion(np.ascontiguousarray(img), cfg, rng)
    image = normalize(img, norm)
    return pad_to(image, np.ascontiguousarray(label), cfg.crop)

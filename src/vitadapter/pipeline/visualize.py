"""Colour maps, overlays and legends of label maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .classes import COCO_PANOPTIC_PALETTE


@dataclass(frozen=True)
class LegendEntry:
    name: str
    color: tuple[int, int, int]
    share: float  # fraction of the image


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB, colour by class id."""
    return np.asarray(palette, np.uint8)[label_map]


def overlay(image: np.ndarray, label_map: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the colour map over the RGB photo: ``(1 - alpha) * photo + alpha * colours``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if image.shape[:2] != label_map.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {label_map.shape} differ in size")
    if image.dtype != np.uint8:
        raise ValueError(f"the photo must be uint8 RGB, got {image.dtype}")
    pairs = (image.astype(np.uint16) << 8) | colorize(label_map, palette)
    return blend_table(alpha)[pairs]


@lru_cache(maxsize=8)
def blend_table(alpha: float) -> np.ndarray:
    """``round((1 - alpha) * photo + alpha * colour)`` in float32 for every pair of uint8
    values, at index ``photo << 8 | colour`` (a 12-megapixel overlay is one lookup)."""
    photo = np.arange(256, dtype=np.float32)[:, None]
    color = np.arange(256, dtype=np.float32)[None, :]
    blended = photo * (1.0 - alpha) + color * alpha
    return np.clip(np.round(blended), 0, 255).astype(np.uint8).ravel()


def add_legend(image: np.ndarray, entries: Sequence[LegendEntry]) -> np.ndarray:
    """The image with a legend panel on its right: a swatch, the name and the share of each
    entry, in the given order."""
    font = _font(max(12, min(22, image.shape[0] // 30)))
    line = int(font.size * 1.6) if hasattr(font, "size") else 18
    swatch = line - 6
    labels = [f"{e.name}  {100 * e.share:.1f}%" for e in entries]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t in labels), default=0)
    panel_w = int(swatch + 3 * 8 + text_w)
    height = max(image.shape[0], line * len(entries) + 16)
    canvas = Image.new("RGB", (image.shape[1] + panel_w, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 8
    for i, (entry, text) in enumerate(zip(entries, labels, strict=True)):
        y = 8 + i * line
        draw.rectangle([x0, y, x0 + swatch, y + swatch], fill=entry.color, outline=(0, 0, 0))
        draw.text((x0 + swatch + 8, y + swatch / 2), text, fill=(0, 0, 0), font=font,
                  anchor="lm")
    return np.asarray(canvas)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def semantic_seg_masks_to_image(masks: Sequence[np.ndarray]) -> np.ndarray:
    """ModelScope's ``semantic_seg_masks_to_image``: paint the i-th mask with the i-th colour of
    mmdet's 133-colour COCO-panoptic palette (by list position, not class id) on black.

    Returns (H, W, 3) float64 in RGB, like ModelScope; ModelScope then writes it with
    ``cv2.imwrite``, which swaps red and blue.
    """
    if len(masks) > len(COCO_PANOPTIC_PALETTE):
        raise ValueError(f"at most {len(COCO_PANOPTIC_PALETTE)} masks can be painted, "
                         f"got {len(masks)}")
    if not masks:
        raise ValueError("no masks to paint")
    image = np.zeros((*masks[0].shape[:2], 3), np.float64)
    for mask, color in zip(masks, COCO_PANOPTIC_PALETTE, strict=False):
        image[np.asarray(mask) > 0] = color
    return image

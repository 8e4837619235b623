"""``SegmentationResult``: a label map and the views people use on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .visualize import LegendEntry, add_legend, colorize, overlay


@dataclass
class SegmentationResult:
    """The segmentation of one photo.

    ``label_map`` holds class ids at the photo's original size. ``confidence[c]`` is the mean,
    over the pixels labelled ``c``, of class ``c``'s posterior there: the merged Mask2Former
    class scores normalised to sum to one per pixel (averaged over test-time augmentations).
    A real per-class score in [0, 1], where ModelScope returns a constant 0.999.
    """

    label_map: np.ndarray
    class_names: tuple[str, ...]
    palette: np.ndarray
    confidence: np.ndarray
    pixel_count: np.ndarray
    image: np.ndarray | None = field(default=None, repr=False)  # the RGB input, for overlays
    model: str = ""
    seconds: float = 0.0

    def __repr__(self) -> str:
        height, width = self.label_map.shape
        top = ", ".join(f"{r['name']} {r['share']:.0%}" for r in self.summary()[:3])
        more = len(self.present) - 3
        return (f"SegmentationResult({width}x{height}, {len(self.present)} classes: {top}"
                f"{f', +{more} more' if more > 0 else ''}; model={self.model!r})")

    @property
    def present(self) -> list[int]:
        """Class ids present in the label map, in descending order (ModelScope's order)."""
        return [int(c) for c in np.flatnonzero(self.pixel_count)[::-1]]

    @property
    def masks(self) -> list[np.ndarray]:
        """One (H, W) uint8 0/1 mask per present class, descending class id."""
        return [(self.label_map == c).astype(np.uint8) for c in self.present]

    @property
    def labels(self) -> list[str]:
        return [self.class_names[c] for c in self.present]

    @property
    def scores(self) -> list[float]:
        return [float(self.confidence[c]) for c in self.present]

    def shares(self) -> dict[int, float]:
        """Fraction of the image covered by each present class."""
        total = float(self.pixel_count.sum())
        return {c: float(self.pixel_count[c]) / total for c in self.present}

    def summary(self) -> list[dict[str, Any]]:
        """The present classes by decreasing share: id, name, pixels, share, score (None
        where the model's scores were not finite, so that JSON stays valid), color."""
        rows = [{"id": c, "name": self.class_names[c], "pixels": int(self.pixel_count[c]),
                 "share": share, "score": _finite(float(self.confidence[c])),
                 "color": [int(v) for v in self.palette[c]]}
                for c, share in self.shares().items()]
        return sorted(rows, key=lambda r: (-r["share"], r["id"]))

    def to_modelscope(self) -> dict[str, list[Any]]:
        """ModelScope's output: ``masks`` (int 0/1 arrays), ``labels`` and ``scores`` (here the
        real confidences) per present class, descending class id."""
        return {"masks": [m.astype(int) for m in self.masks], "labels": self.labels,
                "scores": self.scores}

    def to_hf(self) -> list[dict[str, Any]]:
        """transformers' image-segmentation pipeline output: one ``{"label", "score", "mask"}``
        per present class, ``mask`` a PIL "L" image with values 0/255."""
        return [{"label": name, "score": score, "mask": Image.fromarray(mask * 255)}
                for name, score, mask in zip(self.labels, self.scores, self.masks, strict=True)]

    def label_image(self) -> Image.Image:
        """The label map as a PIL image of class ids: 8-bit, or 16-bit for models with 256
        classes or more."""
        dtype = np.uint8 if len(self.class_names) < 256 else np.uint16
        return Image.fromarray(self.label_map.astype(dtype))

    def colorize(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB colour map, colours indexed by class id."""
        return colorize(self.label_map, self.palette)

    def overlay(self, alpha: float = 0.5, legend: bool = False) -> np.ndarray:
        """The colour map blended over the photo, optionally with a legend of the classes
        present and their share of the image."""
        if self.image is None:
            raise ValueError("this result does not hold its input photo")
        out = overlay(self.image, self.label_map, self.palette, alpha)
        if legend:
            out = add_legend(out, [LegendEntry(r["name"], tuple(r["color"]), r["share"])
                                   for r in self.summary()])
        return out


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None

"""The ``custom`` dataset layout, for people's own data::

    ROOT/classes.json                 {"classes": ["name", ...], "palette": [[r, g, b], ...]}
    ROOT/images/{train,val}/*.jpg|png
    ROOT/annotations/{train,val}/*.png   class ids 0..C-1, 255 = ignore (same relative name)

``palette`` is optional. The split is read into the same :class:`EvalDataset` the evaluation
layouts give, so the evaluator and the training reader handle both alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .datasets import EvalDataset, Layout, Sample, _find, train_id_table

CUSTOM = "custom"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class CustomLayout(Layout):
    """A layout whose class names (and palette) come from the dataset's ``classes.json``."""

    names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.names


def read_classes(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Class names and optional palette of a ``classes.json``, checked."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: the custom layout needs it, e.g. "
                           '{"classes": ["background", "cat"]}') from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) for c in classes)):
        raise DatasetError(f'{path} must hold {{"classes": ["name", ...]}} with at least one '
                           "class name")
    if len(classes) > 255:
        raise DatasetError(f"{path} names {len(classes)} classes; label PNGs hold ids 0..254 "
                           "(255 = ignore)")
    palette = data.get("palette")
    if palette is None:
        return tuple(classes), None
    if (not isinstance(palette, list) or len(palette) != len(classes)
            or not all(isinstance(c, list) and len(c) == 3
                       and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                       for c in palette)):
        raise DatasetError(f"{path}: 'palette' must give one [r, g, b] (0..255) per class "
                           f"({len(classes)} classes)")
    return tuple(classes), tuple((c[0], c[1], c[2]) for c in palette)


def open_custom(root: str | Path, split: str = "train") -> EvalDataset:
    """The ``split`` of a custom dataset, images paired with annotations by relative name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} is not a directory")
    names, palette = read_classes(root / CLASSES_FILE)
    image_dir, label_dir = root / "images" / split, root / "annotations" / split
    if not image_dir.is_dir():
        raise DatasetError(f"no image directory {image_dir} (custom layout: images/{split}/"
                           f"*.jpg|png, annotations/{split}/*.png, classes.json)")
    images = sorted(p for suffix in IMAGE_SUFFIXES for p in _find(image_dir, suffix))
    if not images:
        raise DatasetError(f"no images (*.jpg, *.png) in {image_dir}")
    samples, missing = [], []
    for image in images:
        name = image.relative_to(image_dir).with_suffix("").as_posix()
        label = label_dir / (name + ".png")
        if not label.is_file():
            missing.append((image, label))
        samples.append(Sample(name, image, label))
    if missing:
        image, label = missing[0]
        more = f" (and {len(missing) - 1} more images without one)" if len(missing) > 1 else ""
        raise DatasetError(f"image {image} has no annotation: expected {label}{more}")
    seen: dict[str, Path] = {}
    for sample in samples:
        if sample.name in seen:
            raise DatasetError(f"{seen[sample.name]} and {sample.image} share the name "
                               f"{sample.name!r}: keep one image per annotation")
        seen[sample.name] = sample.image
    layout = CustomLayout(
        CUSTOM, CUSTOM, ("images/{split}",), ".png", ("annotations/{split}",), ".png", {},
        train_id_table(len(names)), f"class ids 0..{len(names) - 1} of {CLASSES_FILE}, or 255",
        names=names, palette=palette)
    return EvalDataset(layout, root, split, image_dir, label_dir, tuple(samples))

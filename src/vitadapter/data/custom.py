"""The ``custom`` dataset layout, for people's own data::

    ROOT/classes.json                 {"classes": ["name", ...], "palette": [[r, g, b], ...]}
    ROOT/images/{train,val}/*.jpg|png
    ROOT/annotations/{train,val}/*.png   class ids 0..C-1, 255 = ignore (same relative name)

``palette`` is optional. The split is read into the same :class:`EvalDataset` the evaluation
layouts give, so the evaluator and the training reader handle both alike.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .datasets import (
    LAYOUTS,
    EvalDataset,
    Layout,
    named_files,
    open_dataset,
    pair_samples,
    train_id_table,
)

CUSTOM = "custom"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASSES_FILE = "classes.json"
LAYOUT_NAMES = (*LAYOUTS, CUSTOM)  # what ``--dataset`` takes


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: the custom layout needs it, e.g. "
                           '{"classes": ["background", "cat"]}') from None
    except IsADirectoryError:
        raise DatasetError(f"{path} is a directory: the custom layout needs a JSON file "
                           'there, e.g. {"classes": ["background", "cat"]}') from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                           "save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise DatasetError(f"{path} nests too deeply to be a class list: expected "
                           '{"classes": ["name", ...]}') from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) for c in classes)):
        raise DatasetError(f'{path} must hold {{"classes": ["name", ...]}} with at least one '
                           "class name")
    if len(classes) > 255:
        raise DatasetError(f"{path} names {len(classes)} classes; label PNGs hold ids 0..254 "
                           "(255 = ignore)")
    duplicates = sorted(c for c, n in Counter(classes).items() if n > 1)
    if duplicates:
        raise DatasetError(f"{path} names the class(es) {', '.join(map(repr, duplicates))} more "
                           "than once: each class id needs a name of its own")
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
    images = named_files(image_dir, IMAGE_SUFFIXES, "image")
    if not images:
        raise DatasetError(f"no images (*.jpg, *.jpeg, *.png, in any letter case) in "
                           f"{image_dir}")
    samples = pair_samples(images, label_dir, ".png")
    layout = CustomLayout(
        CUSTOM, CUSTOM, ("images/{split}",), ".png", ("annotations/{split}",), ".png", {},
        train_id_table(len(names)), f"class ids 0..{len(names) - 1} of {CLASSES_FILE}, or 255",
        names=names, palette=palette)
    return EvalDataset(layout, root, split, image_dir, label_dir, samples)


def open_layout(root: str | Path, dataset: str, split: str) -> EvalDataset:
    """A split of the ``custom`` layout or of one of the evaluation layouts."""
    return open_custom(root, split) if dataset == CUSTOM else open_dataset(root, dataset, split)

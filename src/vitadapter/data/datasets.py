"""Evaluation datasets as they lie on disk: images paired with label maps in train ids.

Each layout is data (:class:`Layout`): where the images and annotations are, how an annotation
is named after its image, and a 256-entry table turning stored label values into train ids
(0..num_classes-1, or 255 for pixels that are not evaluated). Values the table does not allow
are reported with the file name instead of being silently dropped. numpy + Pillow only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from ..pipeline.classes import DATASETS

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255

# COCO-Stuff-164k raw label maps (``stuffthingmaps_trainval2017``) store the COCO category id
# minus one: things 0..90, stuff 91..181, 255 unlabeled. The 91 COCO thing ids include 11 that
# have no category in COCO 2017 and never occur in the maps (1-based: 12 street sign, 26 hat,
# 29 shoe, 30 eye glasses, 45 plate, 66 mirror, 68 window, 69 desk, 71 door, 83 blender,
# 91 hair brush). The train id of a raw id is its rank among the 171 used ones, which is
# exactly mmseg's ``tools/convert_datasets/coco_stuff164k.py`` table ``clsID_to_trID``.
COCO_STUFF_UNUSED_RAW_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_RAW_IDS: tuple[int, ...] = tuple(
    i for i in range(182) if i not in COCO_STUFF_UNUSED_RAW_IDS)  # index = train id


def train_id_table(num_classes: int) -> np.ndarray:
    """Stored values are train ids already; 255 is ignored."""
    return raw_id_table(range(num_classes))


def reduce_zero_label_table(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 (other) -> 255, v -> v - 1, 255 stays 255."""
    table = raw_id_table(range(1, num_classes + 1))
    table[0] = IGNORE_INDEX
    return table


def raw_id_table(raw_ids: Sequence[int]) -> np.ndarray:
    """Stored value ``raw_ids[t]`` becomes train id ``t``; 255 is ignored; others are invalid
    (-1)."""
    table: np.ndarray = np.full(256, -1, np.int16)
    table[np.asarray(raw_ids, np.int64)] = np.arange(len(raw_ids))
    table[IGNORE_INDEX] = IGNORE_INDEX
    return table


@dataclass(frozen=True)
class Layout:
    """How a dataset lies on disk. Directory patterns are relative to the data root, with
    ``{split}`` replaced by the split's directory name; the first that exists is used."""

    name: str
    classes: str  # a key of vitadapter.classes.DATASETS
    image_dirs: tuple[str, ...]
    image_suffix: str
    label_dirs: tuple[str, ...]
    label_suffix: str
    splits: Mapping[str, str]  # split name -> directory name
    label_table: np.ndarray = field(repr=False, compare=False)
    label_note: str  # what valid stored values are, for error messages
    # A list of image names per split (mmseg's ``split=``), relative to the root; without one,
    # every image under the image directory is a sample.
    split_file: str | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return DATASETS[self.classes].classes

    def split_dir(self, split: str) -> str:
        return self.splits.get(split, split)


_COCO_SPLITS = {"val": "val2017", "train": "train2017"}

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("coco-stuff164k", "coco-stuff164k", ("images/{split}",), ".jpg",
               ("annotations/{split}",), "_labelTrainIds.png", _COCO_SPLITS,
               train_id_table(171), "train ids 0..170, or 255"),
        Layout("coco-stuff164k-raw", "coco-stuff164k", ("images/{split}",), ".jpg",
               ("stuffthingmaps_trainval2017/{split}", "annotations/{split}"), ".png",
               _COCO_SPLITS, raw_id_table(COCO_STUFF_RAW_IDS),
               "COCO-Stuff ids 0..181 except the unused "
               + ", ".join(map(str, COCO_STUFF_UNUSED_RAW_IDS)) + ", or 255"),
        Layout("ade20k", "ade20k", ("images/{split}",), ".jpg", ("annotations/{split}",),
               ".png", {"val": "validation", "train": "training"},
               reduce_zero_label_table(150), "0..150 (0 = other, not evaluated), or 255"),
        Layout("cityscapes", "cityscapes", ("leftImg8bit/{split}",), "_leftImg8bit.png",
               ("gtFine/{split}",), "_gtFine_labelTrainIds.png", {},
               train_id_table(19), "train ids 0..18, or 255"),
        # mmseg's tools/convert_datasets/coco_stuff10k.py output (data/coco_stuff10k): train
        # ids shifted by one, 0 = unlabeled (the configs read them with reduce_zero_label).
        Layout("coco-stuff10k", "coco-stuff10k", ("images/{split}",), ".jpg",
               ("annotations/{split}",), "_labelTrainIds.png",
               {"val": "test2014", "test": "test2014", "train": "train2014"},
               reduce_zero_label_table(171), "0..171 (0 = unlabeled, not evaluated), or 255"),
        # mmseg's tools/convert_datasets/pascal_context.py output under VOCdevkit/VOC2010: 0 =
        # background (not evaluated), 1..59 the classes; the split lists the image names.
        Layout("pascal-context-59", "pascal-context-59", ("JPEGImages",), ".jpg",
               ("SegmentationClassContext",), ".png", {},
               reduce_zero_label_table(59), "0..59 (0 = background, not evaluated), or 255",
               split_file="ImageSets/SegmentationContext/{split}.txt"),
    )
}


@dataclass(frozen=True)
class Sample:
    """One image and its annotation. ``name`` is the image path relative to the image
    directory without its suffix (e.g. ``frankfurt/frankfurt_000000_000294``): unique, and
    the key under which results are recorded."""

    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class EvalDataset:
    """The samples of one split, sorted by name (mmseg's order)."""

    layout: Layout
    root: Path
    split: str  # directory name
    image_dir: Path
    label_dir: Path
    samples: tuple[Sample, ...]

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.layout.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_label(self, sample: Sample) -> np.ndarray:
        """The annotation of ``sample`` as an (H, W) uint8 array of train ids (255 ignored)."""
        return decode_label(sample.label, self.layout)


def open_dataset(root: str | Path, dataset: str, split: str = "val") -> EvalDataset:
    """Find the images of ``split`` under ``root`` and pair each with its annotation."""
    try:
        layout = LAYOUTS[dataset]
    except KeyError:
        raise DatasetError(f"unknown dataset {dataset!r}; known: "
                           + ", ".join(LAYOUTS)) from None
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} is not a directory")
    split_dir = layout.split_dir(split)
    image_dir = _first_dir(root, layout.image_dirs, split_dir)
    label_dir = _first_dir(root, layout.label_dirs, split_dir)
    if image_dir is None or label_dir is None:
        raise DatasetError(_layout_message(root, layout, split))
    if layout.split_file is None:
        images = named_files(image_dir, (layout.image_suffix,), "image")
    else:
        names = _split_names(root / layout.split_file.format(split=split_dir), layout)
        images = {name: image_dir / (name + layout.image_suffix) for name in names}
        absent = [i for i in images.values() if not i.is_file()]
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise DatasetError(f"image {absent[0]} listed in the split file is missing{more}")
    if not images:
        raise DatasetError(f"no *{layout.image_suffix} images in {image_dir} (the "
                           f"{layout.name} layout; suffixes in any letter case)")
    # The annotation folder of a split-file layout holds every split's: no orphans there.
    samples = pair_samples(images, label_dir, layout.label_suffix,
                           report_orphans=layout.split_file is None)
    return EvalDataset(layout, root, split_dir, image_dir, label_dir, samples)


def named_files(directory: Path, suffixes: Sequence[str], kind: str) -> dict[str, Path]:
    """The files below ``directory`` whose names end in one of ``suffixes`` in any letter case
    (``IMG_1.JPG`` is a ``.jpg``), by name: the path relative to ``directory`` without the
    suffix, in sorted order. Two ``kind`` files of one name (``a.png`` and ``a.PNG``, or
    ``a.jpg`` and ``a.png``) are refused: which one is meant is unknown."""
    lowered = tuple(suffix.lower() for suffix in suffixes)
    found: dict[str, Path] = {}
    for path in sorted(_files(directory)):
        relative = path.relative_to(directory).as_posix()
        suffix = next((s for s in lowered if relative.lower().endswith(s)), None)
        if suffix is None:
            continue
        name = relative[:-len(suffix)]
        if name in found:
            raise DatasetError(f"{found[name]} and {path} share the name {name!r}: keep one "
                               f"{kind} per name")
        found[name] = path
    return found


def pair_samples(images: Mapping[str, Path], label_dir: Path, label_suffix: str, *,
                 report_orphans: bool = True) -> tuple[Sample, ...]:
    """Each image with the annotation of its name (``label_suffix`` in any letter case); an
    image without one is refused, annotations without an image are reported (a warning: they
    are not used, often the sign of an image with another extension)."""
    labels = named_files(label_dir, (label_suffix,), "annotation")
    samples, missing = [], []
    for name, image in images.items():
        label = labels.get(name)
        if label is None:
            missing.append((image, label_dir / (name + label_suffix)))
        else:
            samples.append(Sample(name, image, label))
    if missing:
        image, expected = missing[0]
        more = f" (and {len(missing) - 1} more images without one)" if len(missing) > 1 else ""
        raise DatasetError(f"image {image} has no annotation: expected {expected}{more}")
    orphans = [path for name, path in labels.items() if name not in images]
    if orphans and report_orphans:
        more = f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""
        logger.warning("%d annotation(s) without an image, not used: %s%s (is its image "
                       "named the same, with a supported extension?)", len(orphans),
                       orphans[0], more)
    return tuple(samples)


def _split_names(path: Path, layout: Layout) -> list[str]:
    """The image names of a split file, in its order (as mmseg reads them)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"split file {path} not found: the {layout.name} layout lists the "
                           "images of each split there") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DatasetError(f"split file {path} lists no images")
    return names


def decode_label(path: Path, layout: Layout) -> np.ndarray:
    """Read a label PNG (values as stored, palette indices for 'P' images, as mmcv's pillow
    backend reads them) and map it to train ids, refusing values the layout does not allow."""
    try:
        with Image.open(path) as img:
            stored = np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"annotation not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"annotation {path} is not a readable image ({exc})") from None
    if stored.ndim != 2:
        raise DatasetError(f"annotation {path} has shape {stored.shape}: expected a "
                           "single-channel label image of class ids, not a colour image")
    if not np.issubdtype(stored.dtype, np.integer):
        raise DatasetError(f"annotation {path} holds {stored.dtype} values: expected integer "
                           "class ids")
    if stored.dtype != np.uint8:
        bad = stored[(stored < 0) | (stored > 255)]
        if bad.size:
            raise DatasetError(f"annotation {path} holds the label value {int(bad.flat[0])}, "
                               f"out of range for {layout.name} ({layout.label_note})")
        stored = stored.astype(np.uint8)
    labels = layout.label_table[stored]
    if labels.min() < 0:
        value = int(np.unique(stored[labels < 0])[0])
        raise DatasetError(f"annotation {path} holds the label value {value}, out of range "
                           f"for {layout.name} ({layout.label_note})")
    return labels.astype(np.uint8)


def _first_dir(root: Path, patterns: tuple[str, ...], split: str) -> Path | None:
    for pattern in patterns:
        path = root / pattern.format(split=split)
        if path.is_dir():
            return path
    return None


def _files(directory: Path) -> list[Path]:
    """The files below ``directory`` (recursively, hidden entries skipped)."""
    return [p for p in directory.rglob("*")
            if p.is_file() and not any(part.startswith(".")
                                       for part in p.relative_to(directory).parts)]


def _layout_message(root: Path, layout: Layout, split: str) -> str:
    split_dir = layout.split_dir(split)

    def options(patterns: tuple[str, ...], suffix: str) -> str:
        return " or ".join(f"{root / p.format(split=split_dir)}/*{suffix}" for p in patterns)

    found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())[:8]
    others = [other.name for other in LAYOUTS.values() if other is not layout
              and _first_dir(root, other.image_dirs, other.split_dir(split))
              and _first_dir(root, other.label_dirs, other.split_dir(split))]
    return (f"{root} does not look like a {layout.name} root for split {split_dir!r}: "
            f"expected images {options(layout.image_dirs, layout.image_suffix)} and "
            f"annotations {options(layout.label_dirs, layout.label_suffix)}; it contains "
            + (", ".join(found) if found else "no directories")
            + (f" (the folders of --dataset {' or '.join(others)} are there)" if others else ""))

"""Low precision against fp32 on the full-size seed preset, with weights that give a real answer.

Plain random weights make the full-size model paint a photo in one class, so agreement would say
nothing. The weights here follow ../shared/notes/full-size-random-weights.md: every tensor drawn
from a distribution chosen per kind of layer (seeded by its key), and the pixel decoder's final
``mask_feature`` bias set from the photo so that only a few queries are active per pixel. The
result is a many-class label map with a wide spread of top-2 margins.

Every mode runs in its own process on the same checkpoint (written once, safetensors) and photo;
each reports seconds per photo and peak RSS, and the label map is compared with fp32 overall and
where the fp32 top-2 margin (of the averaged class probabilities) is at least 1e-3, 1e-2, 1e-1.

    python benchmarks/precision.py [--modes fp32 bf16 int8] [--device cpu] [--photo PATH]
        [--crop 896] [--sensitivity]

A mode is a precision of the PyTorch backend (fp32, bf16, fp16, int8) or ``int8:GROUP[+GROUP]``:
int8 on those Linear groups only (see ``vitadapter.backends.precision.INT8_GROUPS``);
``--sensitivity`` runs int8 on one group at a time. Not for CI: a full-size photo takes minutes
on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench_common import PRESET, peak_rss_gib, run_case
from recipe import default_photo, recipe_weights, set_mask_feature_bias

if TYPE_CHECKING:
    from vitadapter import ModelConfig, Segmenter

MARGINS = (1e-3, 1e-2, 1e-1)


def preset_config(crop: int) -> ModelConfig:
    from vitadapter import get_preset
    from vitadapter.cli.export_onnx import with_crop

    cfg = get_preset(PRESET)
    if crop == cfg.backbone.img_size:
        return cfg
    # A smaller model for quick looks: the photo scaled as much, so it is still two windows.
    small = with_crop(cfg, crop)
    scale = (4 * crop, crop)
    return small.replace(inference=dataclasses.replace(small.inference, img_scale=scale))


def recipe_model(cfg: ModelConfig, photo: np.ndarray) -> nn.Module:
    """The full-size model with the recipe's weights for ``photo``."""
    from vitadapter import Segmenter, build_model

    model = build_model(cfg).eval()
    recipe_weights(model)
    set_mask_feature_bias(model, lambda: Segmenter.from_model(model).scores(photo))
    return model


# --- one mode ---------------------------------------------------------------------------------


def class_probabilities(segmenter: Segmenter, photo: np.ndarray) -> torch.Tensor:
    """The official single-scale answer before the argmax: the averaged window scores resized
    to the photo and softmax-ed, (C, H, W)."""
    canvas = torch.from_numpy(segmenter.scores(photo))
    logits = F.interpolate(canvas[None], size=photo.shape[:2], mode="bilinear",
                           align_corners=False)[0]
    return logits.softmax(0)


def measure(checkpoint: Path, mode: str, device: str, crop: int, photo: np.ndarray,
            out: Path) -> dict:
    from vitadapter import Segmenter, build_model, load_checkpoint
    from vitadapter.backends.torch import TorchRunner

    model = build_model(preset_config(crop), device="meta")
    load_checkpoint(model, checkpoint)
    precision, _, groups = mode.partition(":")
    runner = TorchRunner(model.to(device), precision, owns_model=True,  # type: ignore[arg-type]
                         int8_groups=tuple(groups.split("+")) if groups else None)
    segmenter = Segmenter(runner)
    start = time.perf_counter()
    probs = class_probabilities(segmenter, photo)
    seconds = time.perf_counter() - start
    top2 = probs.topk(2, dim=0).values
    np.savez(out, labels=probs.argmax(0).numpy().astype(np.int16),
             margin=(top2[0] - top2[1]).numpy())
    return {"mode": mode, "seconds": round(seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "classes": len(np.unique(probs.argmax(0).numpy()))}


def agreement(reference: Path, other: Path) -> dict[str, float]:
    with np.load(reference) as ref, np.load(other) as oth:
        same = ref["labels"] == oth["labels"]
        margin = ref["margin"]
    row = {"all": 100 * float(same.mean())}
    for low in MARGINS:
        where = margin >= low
        row[f">={low:g}"] = 100 * float(same[where].mean()) if where.any() else float("nan")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop", type=int, default=896)
    parser.add_argument("--photo", type=Path, default=None)
    parser.add_argument("--sensitivity", action="store_true",
                        help="also int8 on one Linear group at a time")
    parser.add_argument("--case", nargs=5, metavar=("CKPT", "MODE", "DEVICE", "CROP", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    photo = load_photo(args.photo)
    if args.case:
        ckpt, mode, device, crop, out = args.case
        print(json.dumps(measure(Path(ckpt), mode, device, int(crop), photo, Path(out))))
        return
    from vitadapter.backends.precision import INT8_GROUPS
    from vitadapter.weights.checkpoint import Checkpoint, write_safetensors

    modes = list(dict.fromkeys(["fp32", *args.modes]))
    if args.sensitivity:
        modes += [f"int8:{group}" for group in INT8_GROUPS]
    with tempfile.TemporaryDirectory(prefix="vitadapter-precision-") as tmp:
        work = Path(tmp)
        model = recipe_model(preset_config(args.crop), photo)
        checkpoint = work / "recipe.safetensors"
        write_safetensors(Checkpoint({k: v for k, v in model.state_dict().items()
                                      if not k.endswith("relative_position_index")},
                                     source="recipe"), checkpoint)
        del model
        rows = {}
        for mode in modes:
            out = work / f"{mode.replace(':', '_').replace('+', '_')}.npz"
            photo_arg = [] if args.photo is None else ["--photo", str(args.photo)]
            rows[mode] = run_case(__file__, str(checkpoint), mode, args.device,
                                  str(args.crop), str(out), *photo_arg)
            rows[mode].update(agreement(work / "fp32.npz", out))
            print(mode, rows[mode], file=sys.stderr, flush=True)
    fp32 = rows["fp32"]["seconds"]
    print(f"\n{args.device}, crop {args.crop}, photo {photo.shape[1]}x{photo.shape[0]}, "
          f"fp32 answer: {rows['fp32']['classes']} classes\n")
    print("| mode | s / photo | speed vs fp32 | peak RSS GiB | agreement | margin >= 1e-3 "
          "| >= 1e-2 | >= 1e-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['seconds']} | {fp32 / r['seconds']:.2f}x | {r['peak_rss_gib']} | "
              f"{r['all']:.2f} % | {r['>=0.001']:.2f} % | {r['>=0.01']:.2f} % | "
              f"{r['>=0.1']:.2f} % |")


def load_photo(path: Path | None) -> np.ndarray:
    if path is None:
        return default_photo()
    from vitadapter.pipeline.images import load_image

    return load_image(str(path))


if __name__ == "__main__":
    main()

"""``vitadapter export-onnx --checkpoint CKPT --out model.onnx``."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..backends.onnx_metadata import DEFAULT_OPSET, MIN_OPSET
from ..config.presets import SEED_PRESET
from ..config.schema import BEHAVIOURS, ModelConfig
from ..errors import ExportError
from .common import add_model_choice

VERIFY_TOLERANCE = 1e-3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="export a model to ONNX (run it later without PyTorch)",
        description="Export the crop-level network (normalised crops -> class scores) to an "
                    "ONNX file that carries its config, classes, palette and preprocessing; "
                    "run it with `vitadapter segment --onnx FILE` or Segmenter.from_onnx.")
    add_model_choice(p)
    p.add_argument("--checkpoint", default=None,
                   help="weights to export (.zip/.pth/.pth.tar/.pt/.safetensors)")
    p.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                   help="the ViT's weights as a file of their own (Meta's DINOv3 layout: "
                        "--checkpoint is then the head file)")
    p.add_argument("--allow-random", action="store_true",
                   help="without --checkpoint, export random weights (for benchmarks)")
    p.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    p.add_argument("--crop", type=int, default=None, metavar="S",
                   help="crop size of the exported network (default: the config's)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, >= {MIN_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--behaviour", choices=BEHAVIOURS, default=None,
                   help="adapter behaviour (default official)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects beyond tensors (only for files you trust)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--verify", action="store_true",
                   help="then run one random crop in PyTorch and onnxruntime and compare "
                        "(fails above 1e-3 of the score scale)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.onnx_export import export_onnx, external_data_path, verify_export
    from ..backends.torch import load_model
    from ..modeling.build import build_model, resolve_config

    if args.checkpoint is None and not args.allow_random:
        raise ExportError("give the weights to export with --checkpoint (or --allow-random "
                          "to export random weights, e.g. for benchmarks)")
    cfg = resolve_config(args.config or args.model or SEED_PRESET, args.behaviour)
    if args.crop is not None and args.crop != cfg.inference.crop_size[0]:
        cfg = with_crop(cfg, args.crop)
    start = time.perf_counter()
    if args.checkpoint is not None:
        model = load_model(cfg, args.checkpoint, device="cpu",
                           trust_checkpoint=args.trust_checkpoint,
                           backbone_checkpoint=args.backbone_checkpoint)
        weights = Path(args.checkpoint).name
    else:
        model = build_model(cfg)
        weights = "random"
    out = export_onnx(model, args.out, opset=args.opset, force=args.force,
                      weights=weights)
    size = sum(p.stat().st_size for p in (out, external_data_path(out)) if p.is_file()) / 2**20
    print(f"wrote {out} ({size:.1f} MiB) in {time.perf_counter() - start:.1f}s")
    if args.verify:
        error = verify_export(model, out)
        print(f"onnxruntime vs PyTorch on a random crop: max difference {error:.2e} of the "
              "score scale")
        if not error <= VERIFY_TOLERANCE:
            raise ExportError(f"{out} does not reproduce PyTorch (difference {error:.2e} > "
                              f"{VERIFY_TOLERANCE:g}); please report this")
    return 0


def with_crop(cfg: ModelConfig, crop: int) -> ModelConfig:
    """The config for another crop size (a BEiT checkpoint's relative position tables must fit
    it; a plain ViT resizes its position embedding to any crop); the slide stride is capped at
    the crop."""
    inference = cfg.inference
    stride = (min(inference.stride[0], crop), min(inference.stride[1], crop))
    backbone = cfg.backbone
    if backbone.kind == "beit":
        backbone = dataclasses.replace(backbone, img_size=crop)
    return cfg.replace(
        backbone=backbone,
        inference=dataclasses.replace(inference, crop_size=(crop, crop), stride=stride))

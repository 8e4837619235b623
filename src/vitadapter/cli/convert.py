"""``vitadapter convert SRC DST.safetensors``."""

from __future__ import annotations

import argparse
import time

from .common import add_model_choice


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to safetensors",
                       description="Convert an official .zip/.pth/.pth.tar, a ModelScope "
                                   "pytorch_model.pt or a state dict to a safetensors file "
                                   "(fast loading; no pickle); with --backbone-checkpoint, "
                                   "merge Meta's DINOv3 head and backbone files into one that "
                                   "loads with --checkpoint alone.")
    p.add_argument("src", help="checkpoint to read")
    p.add_argument("dst", help="safetensors file to write")
    p.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                   help="merge the ViT's weights from this second file (Meta's DINOv3 layout: "
                        "SRC is the head file, this the dinov3_*_pretrain_*.pth, or "
                        "transformers' DINOv3 safetensors with --model/--config)")
    add_model_choice(p)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects beyond tensors (only for files you trust)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..modeling.build import resolve_config  # imports torch: not at CLI start-up
    from ..weights.checkpoint import convert_to_safetensors

    start = time.perf_counter()
    named = args.config or args.model
    out = convert_to_safetensors(
        args.src, args.dst, trust_checkpoint=args.trust_checkpoint, overwrite=args.force,
        backbone=args.backbone_checkpoint,
        backbone_config=resolve_config(named).backbone if named else None)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB) in {time.perf_counter() - start:.1f}s")
    return 0

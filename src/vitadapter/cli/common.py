"""Arguments shared by the commands that run a model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..presets import PRESETS, SEED_PRESET

if TYPE_CHECKING:
    from ..predictor import Segmenter


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--model", default=None, metavar="PRESET",
                        help=f"named preset (default {SEED_PRESET}); one of: "
                             + ", ".join(PRESETS))
    choice.add_argument("--config", default=None,
                        help="config.json (our layout or the official mmcv layout)")
    group.add_argument("--checkpoint", default=None,
                       help="weights (.zip/.pth/.pth.tar/.pt/.safetensors); default: the "
                            "preset's release weights, cached in $VITADAPTER_HOME or "
                            "downloaded once")
    group.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    group.add_argument("--behaviour", choices=("official", "modelscope"), default=None,
                       help="adapter behaviour (default official; 'modelscope' reproduces "
                            "ModelScope's outputs)")
    group.add_argument("--tta", action="store_true",
                       help="official multi-scale + flip test-time augmentation")
    group.add_argument("--batch-windows", type=int, default=1, metavar="N",
                       help="slide windows per forward pass (default 1)")
    group.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default="fp32",
                       help="fp32 (default: the official numbers), bf16 (CPU/CUDA autocast), "
                            "fp16 (CUDA autocast) or int8 (quantised Linear layers, CPU)")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="allow pickled objects beyond tensors (only for files you trust)")


def segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    from ..predictor import Segmenter

    return Segmenter(args.model or SEED_PRESET, config=args.config, checkpoint=args.checkpoint,
                     device=args.device, behaviour=args.behaviour, tta=args.tta,
                     batch_windows=args.batch_windows,
                     trust_checkpoint=args.trust_checkpoint, precision=args.precision)

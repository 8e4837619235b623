"""Arguments shared by the commands that run a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.presets import PRESETS, SEED_PRESET
from ..config.schema import BEHAVIOURS, PRECISIONS
from ..errors import VitAdapterError

if TYPE_CHECKING:
    from ..segmenter import Segmenter


def add_model_choice(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--model PRESET`` or ``--config CONFIG`` (mutually exclusive)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--model", default=None, metavar="PRESET",
                        help=f"named preset (default {SEED_PRESET}); one of: "
                             + ", ".join(PRESETS))
    choice.add_argument("--config", default=None,
                        help="config.json (our layout or the official mmcv layout)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    add_model_choice(group)
    group.add_argument("--checkpoint", default=None,
                       help="weights (.zip/.pth/.pth.tar/.pt/.safetensors); default: the "
                            "preset's release weights, cached in $VITADAPTER_HOME or "
                            "downloaded once")
    group.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                       help="the ViT's weights as a file of their own, as Meta distributes "
                            "DINOv3 (--checkpoint is then the head file): Meta's "
                            "dinov3_*_pretrain_*.pth or transformers' DINOv3 safetensors")
    group.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1, 1 (a CUDA index), mps (default: cuda when "
                            "available)")
    group.add_argument("--behaviour", choices=BEHAVIOURS, default=None,
                       help="adapter behaviour (default official; 'modelscope' reproduces "
                            "ModelScope's outputs)")
    group.add_argument("--tta", action="store_true",
                       help="multi-scale + flip test-time augmentation of the model's "
                            "pipeline: the official mmseg one, or Meta's (ratios 0.9..1.1 of "
                            "the short side + flip) for inference.pipeline 'dinov3'")
    group.add_argument("--batch-windows", type=int, default=1, metavar="N",
                       help="slide windows per forward pass (default 1)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default: the official numbers), bf16 (CPU/CUDA autocast), "
                            "fp16 (CUDA autocast) or int8 (CPU, experimental: the Linear "
                            "layers of the ViT blocks' MLPs quantised dynamically, per output "
                            "channel; the rest stays fp32)")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="allow pickled objects beyond tensors (only for files you trust)")
    group.add_argument("--compile", action="store_true",
                       help="run the model through torch.compile: the first window compiles "
                            "(minutes for a large model), later processes reuse the compiled "
                            "code cached in $VITADAPTER_HOME/compile")


def add_onnx_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="run a file written by `vitadapter export-onnx` with onnxruntime "
                             "instead of PyTorch (the model, classes and preprocessing come "
                             "from the file; --device cpu or cuda picks the provider)")


def onnx_providers(device: str | None) -> list[str]:
    """onnxruntime execution providers for a --device value."""
    if device is None or device == "cpu":
        return ["CPUExecutionProvider"]
    if device.isdigit() or device.split(":")[0] in ("cuda", "gpu"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise VitAdapterError(f"--device {device} is not available with --onnx (cpu or cuda)")


def prediction_settings(args: argparse.Namespace, segmenter: Segmenter) -> dict[str, Any]:
    """What besides the model config changes the predictions: the precision, the kind of
    device (CPU and CUDA kernels round differently) and the weights' content (SHA-256 of the
    checkpoint or ONNX file; the path alone may hold other weights tomorrow)."""
    from ..files import sha256_of

    named = getattr(args, "onnx", None) or getattr(args, "checkpoint", None)
    if named is None:
        from ..weights.download import cached_weights_path

        named = cached_weights_path(segmenter.config)
    weights = Path(named)
    settings = {"precision": getattr(segmenter.runner, "precision", "fp32"),
                "device_kind": segmenter.device.split(":")[0],
                "checkpoint_sha256": sha256_of(weights) if weights.is_file() else None}
    if getattr(args, "backbone_checkpoint", None):
        settings["backbone_checkpoint_sha256"] = sha256_of(Path(args.backbone_checkpoint))
    return settings


def segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    from ..segmenter import Segmenter

    if getattr(args, "onnx", None):
        clashes = [flag for flag, value in (("--model", args.model), ("--config", args.config),
                                            ("--checkpoint", args.checkpoint),
                                            ("--backbone-checkpoint",
                                             args.backbone_checkpoint),
                                            ("--behaviour", args.behaviour),
                                            ("--trust-checkpoint", args.trust_checkpoint),
                                            ("--precision", args.precision != "fp32"),
                                            ("--compile", args.compile))
                   if value]
        if clashes:
            raise VitAdapterError(f"--onnx takes the model from the file; drop "
                                  f"{', '.join(clashes)}")
        return Segmenter.from_onnx(args.onnx, providers=onnx_providers(args.device),
                                   tta=args.tta, batch_windows=args.batch_windows)
    return Segmenter(args.model or SEED_PRESET, config=args.config, checkpoint=args.checkpoint,
                     device=args.device, behaviour=args.behaviour, tta=args.tta,
                     batch_windows=args.batch_windows,
                     trust_checkpoint=args.trust_checkpoint, precision=args.precision,
                     backbone_checkpoint=args.backbone_checkpoint, compile=args.compile)

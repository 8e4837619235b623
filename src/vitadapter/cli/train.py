"""``vitadapter train``: fine-tune on a dataset with the official recipe of the model's head."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.presets import PRESETS, SEED_PRESET
from ..config.training import TRAIN_PRECISIONS, TrainSettings, option_fields, option_type
from ..data.custom import CUSTOM
from ..data.datasets import LAYOUTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune on your own data (official recipe; DINOv3: frozen ViT)",
        description="Fine-tune a model on a dataset: AdamW with layer-wise lr decay, poly "
                    "schedule with linear warm-up, the mmseg 0.x augmentation and the official "
                    "loss of the model's head (Mask2Former or UperNet); DINOv3 models train "
                    "their adapter and head on a frozen ViT (--backbone-checkpoint: Meta's "
                    "pretrained weights). The work dir holds "
                    "config.json, latest.safetensors, best.safetensors, log.jsonl, curves.png "
                    "and checkpoints/ (what --resume continues from); one run at a time.")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--model", default=None, metavar="PRESET",
                        help=f"architecture and recipe of a preset (default {SEED_PRESET}); "
                             "one of: " + ", ".join(PRESETS))
    choice.add_argument("--config", default=None, help="config.json of the architecture")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR")
    p.add_argument("--dataset", required=True, choices=[CUSTOM, *LAYOUTS],
                   help="custom (images/{train,val}, annotations/{train,val}, classes.json) "
                        "or a layout of `evaluate`")
    p.add_argument("--work-dir", required=True, type=Path, metavar="DIR")
    p.add_argument("--init", default=None, metavar="PRESET|CHECKPOINT",
                   help="start from a preset's release weights or a checkpoint (other classes: "
                        "the class layers are re-initialised; other crop: the relative "
                        "position tables are resized); default: random weights")
    p.add_argument("--crop", type=int, default=None,
                   help="square training crop, also the slide window of config.json (default: "
                        "the model's inference crop)")
    p.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="resize scale at ratio 1 (ratio 0.5-2.0 drawn per image; default: the "
                        "model's test img_scale)")
    for f in option_fields():  # the recipe's numbers: help and default from TrainSettings
        default = "" if f.default is None else f" (default {f.default})"
        flag, kind = f"--{f.name.replace('_', '-')}", option_type(f)
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f.metadata["help"] + default)
        else:
            p.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"),
                           help=f.metadata["help"] + default)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir (from its newest complete checkpoint)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, default=None,
                   help="autocast of the model's forward (default fp32); bf16 on GPUs and on "
                        "CPUs with native bf16, fp16 (with a gradient scaler) on CUDA only; "
                        "the deformable attention sampling and the losses stay fp32")
    p.add_argument("--with-cp", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing of the ViT blocks and adapter interactions "
                        "(less memory, ~30%% more compute; default: on for the large models)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects beyond tensors in --init (files you trust)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile of the backbone and decode head: the first iterations "
                        "compile (minutes), later runs reuse the compiled code cached in "
                        "$VITADAPTER_HOME/compile")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import train

    names = ["init", "crop", "device", "precision", "with_cp", "compile",
             *(f.name for f in option_fields())]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.img_scale:
        given["img_scale"] = tuple(args.img_scale)
    settings = TrainSettings(
        data_root=args.data_root, dataset=args.dataset, work_dir=args.work_dir,
        model=args.config or args.model or SEED_PRESET, resume=args.resume,
        trust_checkpoint=args.trust_checkpoint, progress=not args.quiet, **given)
    trainer = train(settings)
    if trainer.rank:
        return 0
    print(f"trained {trainer.iteration} iterations; weights: "
          f"{args.work_dir / 'latest.safetensors'}")
    return 0

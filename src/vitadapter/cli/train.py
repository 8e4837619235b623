"""``vitadapter train``: fine-tune on a dataset with the official Mask2Former recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.presets import PRESETS, SEED_PRESET
from ..data.custom import CUSTOM
from ..data.datasets import LAYOUTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune on your own data (official recipe)",
        description="Fine-tune a model on a dataset: AdamW with layer-wise lr decay, poly "
                    "schedule with linear warm-up, the mmseg 0.x augmentation and the official "
                    "Mask2Former losses. The work dir holds config.json, latest.safetensors, "
                    "best.safetensors, log.jsonl, curves.png and the state --resume needs.")
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
                        "the class embedding is re-initialised; other crop: the relative "
                        "position tables are resized); default: random weights")
    p.add_argument("--iters", type=int, default=None,
                   help="training iterations (default 80000, as the 896 recipes)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per process and step (default 2)")
    p.add_argument("--crop", type=int, default=None,
                   help="square training crop (default: the model's)")
    p.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="resize scale at ratio 1 (ratio 0.5-2.0 drawn per image; default: the "
                        "model's test img_scale)")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate (default 2e-5)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default 0.05)")
    p.add_argument("--layer-decay", type=float, default=None,
                   help="layer-wise lr decay rate (default 0.9)")
    p.add_argument("--warmup-iters", type=int, default=None,
                   help="linear warm-up iterations (default 1500)")
    p.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth rate of the backbone (default 0.3)")
    p.add_argument("--num-points", type=int, default=None,
                   help="points of the mask losses and the matcher (default 12544)")
    p.add_argument("--eval-interval", type=int, default=None,
                   help="evaluate on the val split every N iterations (default 8000) and at "
                        "the end (0: never)")
    p.add_argument("--save-interval", type=int, default=None,
                   help="write latest.safetensors every N iterations (default 1000)")
    p.add_argument("--log-interval", type=int, default=None,
                   help="log every N iterations (default 50)")
    p.add_argument("--resume", action="store_true", help="continue the run in --work-dir")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data loading processes (default 2)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
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


# Options passed through to TrainSettings when given (None: the recipe's default there).
_OPTIONAL = ("init", "iters", "batch_size", "crop", "lr", "weight_decay", "layer_decay",
             "warmup_iters", "drop_path", "num_points", "eval_interval", "save_interval",
             "log_interval", "seed", "device", "num_workers", "precision", "with_cp",
             "compile")


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import TrainSettings, train

    given = {name: getattr(args, name) for name in _OPTIONAL if getattr(args, name) is not None}
    if args.img_scale:
        given["img_scale"] = tuple(args.img_scale)
    settings = TrainSettings(
        data_root=args.data_root, dataset=args.dataset, work_dir=args.work_dir,
        model=args.config or args.model or SEED_PRESET, resume=args.resume,
        trust_checkpoint=args.trust_checkpoint, **given)
    trainer = train(settings)
    if trainer.rank:
        return 0
    print(f"trained {trainer.iteration} iterations; weights: "
          f"{args.work_dir / 'latest.safetensors'}")
    return 0

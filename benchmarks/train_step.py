"""Seconds per training iteration and peak memory of `vitadapter train`'s step.

Runs the Trainer's step (forward, official Mask2Former loss, backward, AdamW) on random
normalised crops with random label maps, after one warm-up step. Prints a markdown row:
model, device, batch, crop, s/iter (median), peak memory (CUDA allocator, or process RSS on
CPU). ``--model tiny`` is the tiny reference config (tests/data/reference/tiny-upstream).
Options: ``--bf16`` (autocast) for the GPU numbers; ``--frozen`` trains the adapter and head
on a frozen ViT (the DINOv3 recipe), ``--frozen-bf16`` with its weights in bf16 as well.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from vitadapter import build_model
from vitadapter.training import RandomPoints, layer_decay_param_groups
from vitadapter.training.criterion import criterion_for

TINY = Path(__file__).parents[1] / "tests/data/reference/tiny-upstream/config.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny", help="tiny or a preset name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--num-points", type=int, default=12544)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--frozen", action="store_true", help="freeze the ViT")
    parser.add_argument("--frozen-bf16", action="store_true", help="freeze the ViT in bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(TINY if args.model == "tiny" else args.model, device=device).train()
    if args.frozen or args.frozen_bf16:
        model.backbone.freeze_vit(torch.bfloat16 if args.frozen_bf16 else None)
    crop, classes = model.crop_size, model.num_classes
    criterion = criterion_for(model, RandomPoints(torch.Generator().manual_seed(0)),
                              args.num_points)
    groups = layer_decay_param_groups(model, 2e-5, 0.05, 0.9, model.config.backbone.depth)
    optimizer = torch.optim.AdamW(groups, lr=2e-5, weight_decay=0.05)  # (the lr: no matter)
    images = torch.randn(args.batch_size, 3, crop, crop, device=device)
    labels = torch.randint(0, min(classes, 8), (args.batch_size, crop, crop), device=device)
    times = []
    for i in range(args.iters + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            losses = criterion(model, images, labels)
        optimizer.zero_grad()
        sum(losses.values()).backward()  # type: ignore[union-attr]
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**30, "CUDA"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RSS"
    vit = ("frozen bf16" if args.frozen_bf16 else "frozen" if args.frozen or args.frozen_bf16
           else "trained")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("| model | ViT | device | batch | crop | points | trained params | s/iter | "
          "peak memory | per image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {vit} | {args.device}{' bf16' if args.bf16 else ''} | "
          f"{args.batch_size} | {crop} | {args.num_points} | {trained / 1e6:.1f}M | "
          f"{statistics.median(times):.2f} | {peak:.2f} GiB ({kind}) | "
          f"{peak / args.batch_size:.2f} GiB |")


if __name__ == "__main__":
    main()

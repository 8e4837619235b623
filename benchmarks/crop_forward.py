"""Time and peak memory of one full-preset crop forward pass on random weights.

    python benchmarks/crop_forward.py [--preset NAME] [--device cpu] [--repeat 1] [--reference]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vitadapter import build_model
from vitadapter.ops import reference_path
from vitadapter.presets import SEED_PRESET


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=SEED_PRESET)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--reference", action="store_true", help="force the reference path")
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(args.preset, device=args.device)
    build_s = time.perf_counter() - start
    rss_model = peak_rss_gib()
    size = model.crop_size
    crop = torch.randn(1, 3, size, size, device=args.device)
    times = []
    with torch.inference_mode(), reference_path(args.reference):
        for _ in range(args.repeat):
            start = time.perf_counter()
            model(crop)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    print(f"| preset | path | threads | build s | crop s (best of {args.repeat}) | "
          "peak RSS after build GiB | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {'reference' if args.reference else 'default'} | "
          f"{torch.get_num_threads()} | {build_s:.1f} | {min(times):.1f} | {rss_model:.2f} | "
          f"{peak_rss_gib():.2f} |")


if __name__ == "__main__":
    main()

"""Seconds per photo and peak RSS across the model zoo (random weights, CPU by default).

Each preset runs in its own process (peak RSS is a per-process high-water mark): the model is
built with random weights, wrapped in a ``Segmenter`` and segments one photo; the first call is
a warm-up only when ``--repeat`` is above 1 (the minimum is reported).

    python benchmarks/zoo.py [--presets NAME ...] [--size 512x512] [--device cpu]
                             [--repeat 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

from bench_common import PRESET, peak_rss_gib, run_case
from crop_forward import count_flops

DEFAULT_PRESETS = (
    "ade20k-deit-adapter-t-upernet-512",    # small: ViT-Adapter-T + UperNet
    "ade20k-deit-adapter-b-upernet-512",    # base: ViT-Adapter-B + UperNet
    "ade20k-augreg-adapter-l-upernet-512",  # large: ViT-Adapter-L + UperNet
    PRESET,                                 # BEiT-Adapter-L + Mask2Former at 896
)


def measure(preset: str, size: str, device: str, repeat: int, threads: int | None) -> dict:
    """One case, in this process."""
    import numpy as np
    import torch

    from vitadapter import PRESETS, Segmenter, build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(preset, device=device)
    build_s = time.perf_counter() - start
    segmenter = Segmenter.from_model(model)
    width, height = (int(v) for v in size.split("x"))
    photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = segmenter(photo)
        times.append(time.perf_counter() - start)
    assert result.label_map.shape == (height, width)
    cfg = PRESETS[preset]
    return {"preset": preset, "head": cfg.head.kind, "crop": cfg.inference.crop_size[0],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "build_s": build_s, "seconds": min(times), "peak_rss_gib": peak_rss_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--size", default="512x512", help="photo WIDTHxHEIGHT")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--case", metavar="PRESET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.size, args.device, args.repeat,
                                 args.threads or None)))
        return

    common = ["--size", args.size, "--device", args.device, "--repeat", str(args.repeat),
              "--threads", str(args.threads)]
    rows = [run_case(__file__, preset, *common) for preset in args.presets]
    base = next((r["seconds"] for r in rows if r["preset"] == PRESET), None)
    print(f"| preset | head | crop | params | TFLOP / crop | seconds / photo ({args.size}) | "
          "vs BEiT-L M2F | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seconds'] / base:.3f}x" if base else "-"
        print(f"| {r['preset']} | {r['head']} | {r['crop']} | {r['params_m']:.0f}M | "
              f"{count_flops(r['preset']) / 1e12:.2f} | {r['seconds']:.1f} | {ratio} | "
              f"{r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()

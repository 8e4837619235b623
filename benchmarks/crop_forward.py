"""One full-preset crop forward pass (random weights): time, peak RSS, FLOPs and efficiency.

Each mode runs in its own process (peak RSS is per process): ``reference`` (the straightforward
path: explicit attention, per-level grid_sample), ``fast`` (the default), ``bf16`` and
``int8`` (the fast path at that precision). The FLOPs are counted once on the meta device with
``torch.utils.flop_counter`` (matrix products and convolutions), and the machine's fp32 GEMM
throughput is measured in the same run, so the efficiency (achieved FLOP/s over GEMM FLOP/s)
is reported next to the fast/reference ratio.

    python benchmarks/crop_forward.py [--modes reference fast] [--device cpu] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench_common import PRESET, peak_rss_gib, run_case

MODES = ("reference", "fast", "bf16", "int8")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_flops_per_second(device: str, size: int = 4096, repeat: int = 5) -> float:
    """Best fp32 ``size^3`` matrix-product rate on ``device``."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def count_flops(preset: str) -> float:
    """FLOPs of one crop, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitadapter import build_model
    from vitadapter.ops import reference_path

    model = build_model(preset, device="meta").requires_grad_(False)
    crop = torch.empty(1, 3, model.crop_size, model.crop_size, device="meta")
    with FlopCounterMode(display=False) as counter, reference_path():
        model(crop)
    return float(counter.get_total_flops())


def measure(preset: str, mode: str, device: str, repeat: int) -> dict:
    """One mode, in this process."""
    from vitadapter import build_model
    from vitadapter.backends.precision import autocast, check_precision, prepare_model
    from vitadapter.ops import reference_path

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(preset, device=device).eval()
    build_s = time.perf_counter() - start
    precision = check_precision(mode if mode in ("bf16", "int8") else "fp32", device)
    model = prepare_model(model, precision, inplace=True)
    rss_model = peak_rss_gib()
    crop = torch.randn(1, 3, model.crop_size, model.crop_size, device=device)
    times = []
    with (torch.inference_mode(), reference_path(mode == "reference"),
          autocast(precision, torch.device(device))):
        for _ in range(repeat):
            synchronize(device)
            start = time.perf_counter()
            model(crop)
            synchronize(device)
            times.append(time.perf_counter() - start)
    memory = (torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda")
              else peak_rss_gib())
    return {"mode": mode, "threads": torch.get_num_threads(), "build_s": build_s,
            "seconds": min(times), "first_s": times[0], "rss_after_build_gib": rss_model,
            "peak_gib": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--modes", nargs="+", default=["reference", "fast"], choices=MODES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--case", nargs=2, metavar=("PRESET", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(*args.case, args.device, args.repeat)))
        return

    flops = count_flops(args.preset)
    gemm = gemm_flops_per_second(args.device)
    rows = [run_case(__file__, args.preset, mode, "--device", args.device,
                     "--repeat", str(args.repeat)) for mode in args.modes]
    gemm_after = gemm_flops_per_second(args.device)
    memory = "peak CUDA GiB" if args.device.startswith("cuda") else "peak RSS GiB"
    print(f"{args.preset} on {args.device}, {rows[0]['threads']} threads: "
          f"{flops / 1e12:.2f} TFLOP per crop; fp32 GEMM {gemm / 1e9:.0f} GFLOP/s before, "
          f"{gemm_after / 1e9:.0f} GFLOP/s after the crops")
    gemm = max(gemm, gemm_after)
    print(f"\n| mode | crop s (best of {args.repeat}) | first s | build s | "
          f"RSS after build GiB | {memory} | GFLOP/s | of GEMM peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = flops / r["seconds"]
        print(f"| {r['mode']} | {r['seconds']:.1f} | {r['first_s']:.1f} | {r['build_s']:.1f} | "
              f"{r['rss_after_build_gib']:.2f} | {r['peak_gib']:.2f} | {rate / 1e9:.0f} | "
              f"{rate / gemm:.0%} |")
    seconds = {r["mode"]: r["seconds"] for r in rows}
    if "reference" in seconds:
        for mode in seconds.keys() - {"reference"}:
            print(f"{mode}: {seconds['reference'] / seconds[mode]:.2f}x the reference path "
                  "(same run)")


if __name__ == "__main__":
    main()

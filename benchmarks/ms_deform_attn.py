"""Fast against reference multi-scale deformable attention at the shapes of the full model.

Times are the best of ``--repeat`` calls after one warm-up, the two paths interleaved in one
process so that both see the same machine load. Peak memory is measured per (shape, path) in a
fresh process: the rise of the CUDA allocator peak, or on Linux CPUs of the RSS high-water mark
(reset after the inputs are built), during one call. Prints one markdown row per shape.

    python benchmarks/ms_deform_attn.py [--device cpu] [--repeat 3] [--threads N]
                                        [--shape all|pixel_decoder|injector|extractor]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

# Query grids, value levels, heads, head dim and points of one 896 crop (BEiT-Adapter-L + M2F).
SHAPES: dict[str, dict] = {
    "pixel_decoder": {"queries": [(28, 28), (56, 56), (112, 112)],
                      "levels": [(28, 28), (56, 56), (112, 112)], "heads": 32, "dim": 32},
    "injector": {"queries": [(56, 56)], "levels": [(112, 112), (56, 56), (28, 28)],
                 "heads": 16, "dim": 32},
    "extractor": {"queries": [(112, 112), (56, 56), (28, 28)], "levels": [(56, 56)],
                  "heads": 16, "dim": 32},
}
POINTS = 4


def make_inputs(name: str, device: str) -> tuple[torch.Tensor, list[tuple[int, int]],
                                                 torch.Tensor, torch.Tensor]:
    """Value, shapes, locations and weights shaped like the model's: each query samples around
    its own position, offsets of about two pixels of each level."""
    spec = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    levels, heads, dim = spec["levels"], spec["heads"], spec["dim"]
    total = sum(h * w for h, w in levels)
    refs = []
    for h, w in spec["queries"]:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                indexing="ij")
        refs.append(torch.stack((xs, ys), -1).view(-1, 2))
    ref = torch.cat(refs)
    queries = ref.shape[0]
    sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float32)
    offsets = torch.randn(1, queries, heads, len(levels), POINTS, 2, generator=gen) * 2
    locations = ref[None, :, None, None, None, :] + offsets / sizes[:, None, :]
    weights = torch.randn(1, queries, heads, len(levels) * POINTS, generator=gen).softmax(-1)
    value = torch.randn(1, total, heads, dim, generator=gen)
    return (value.to(device), levels, locations.to(device),
            weights.view(1, queries, heads, len(levels), POINTS).to(device))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rise_mib(name: str, path: str, device: str) -> float:
    """Rise of peak memory during one call: CUDA allocator peak, or on Linux the RSS
    high-water mark (reset after the inputs are built, through /proc/self/clear_refs)."""
    from vitadapter.ops import ms_deform_attn, reference_path

    value, levels, locations, weights = make_inputs(name, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
    with torch.inference_mode(), reference_path(path == "reference"):
        ms_deform_attn(value, levels, locations, weights)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kib("VmHWM") * 1024
    return (peak - baseline) / 2**20


def measure_peak(script: str, name: str, path: str, args: argparse.Namespace) -> float:
    """Peak rise of ``path`` at ``name`` in a fresh process of ``script``, alone."""
    cmd = [sys.executable, script, "--memory-worker", name, path, "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def parse_arguments(doc: str) -> argparse.Namespace:
    """The options of both deformable-attention benchmarks, torch threads applied."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--shape", default="all", choices=["all", *SHAPES])
    parser.add_argument("--memory-worker", nargs=2, metavar=("SHAPE", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def time_both(name: str, device: str, repeat: int) -> tuple[dict[str, float], float]:
    """Best seconds of each path, calls interleaved so both see the same machine load; and the
    largest absolute difference of their outputs."""
    from vitadapter.ops import ms_deform_attn, reference_path

    value, levels, locations, weights = make_inputs(name, device)
    best = {"reference": float("inf"), "fast": float("inf")}
    outputs = {}
    with torch.inference_mode():
        for round_ in range(repeat + 1):  # round 0 warms up
            for path in best:
                outputs[path] = None
                with reference_path(path == "reference"):
                    start = time.perf_counter()
                    outputs[path] = ms_deform_attn(value, levels, locations, weights)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                if round_:
                    best[path] = min(best[path], seconds)
    diff = (outputs["reference"] - outputs["fast"]).abs().max().item()
    return best, diff


def main() -> None:
    args = parse_arguments(__doc__)
    if args.memory_worker:
        print(peak_rise_mib(*args.memory_worker, args.device))
        return

    names = list(SHAPES) if args.shape == "all" else [args.shape]
    print(f"device {args.device}, {args.threads or torch.get_num_threads()} threads, "
          f"best of {args.repeat}; peak = rise of peak memory during one call")
    print("| shape | reference s | fast s | speed-up | reference peak MiB | fast peak MiB | "
          "memory ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        best, diff = time_both(name, args.device, args.repeat)
        peak = {path: measure_peak(__file__, name, path, args) for path in best}
        ref, fast = best["reference"], best["fast"]
        ratio = f"{peak['reference'] / peak['fast']:.1f}x" if peak["fast"] >= 1 else "-"
        print(f"| {name} | {ref:.3f} | {fast:.3f} | {ref / fast:.1f}x | {peak['reference']:.0f} | "
              f"{peak['fast']:.0f} | {ratio} | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()

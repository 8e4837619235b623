"""End-to-end seconds per photo and peak RSS with the full seed preset (random weights).

Each measurement runs in its own process (peak RSS is a per-process high-water mark): the model
is written once as a synthetic safetensors checkpoint, then every case loads it the way a user
would (``Segmenter`` -> memory-mapped safetensors) and segments one photo of the given size.

    python benchmarks/end_to_end.py [--sizes 640x480 4000x3000] [--device cpu] [--repeat 1]
                                    [--paths fast reference]

``--stream`` instead measures a stream of photos through ``vitadapter.stream.segment_stream``:
the first photo (warm-up: first forward passes, allocator growth), the steady-state rate
(photos/s over the following photos, from the first result to the last) and the share of that
time spent inside the crop forward passes, for the tiny reference model and, with ``--models
tiny seed``, a preset on random weights (``--preset``, default the seed preset); each model in
its own process, the load average printed with each row.

    python benchmarks/end_to_end.py --stream [--models tiny seed] [--photos 8] [--size 640x480]
                                    [--batch-windows 1] [--precision fp32|bf16|fp16]
                                    [--preset NAME] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_common import PRESET, peak_rss_gib, run_case, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests/data/reference/tiny-upstream/config.json"
TINY_CHECKPOINT = ROOT / "tests/data/reference/checkpoint.pth"


def measure(checkpoint: str, size: str, device: str, path: str, repeat: int) -> dict:
    """One case, in this process."""
    import numpy as np

    from vitadapter import Segmenter
    from vitadapter.ops import reference_path

    width, height = (int(v) for v in size.split("x"))
    start = time.perf_counter()
    segmenter = Segmenter(PRESET, checkpoint=checkpoint, device=device)
    load_s = time.perf_counter() - start
    photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    times = []
    with reference_path(path == "reference"):
        for _ in range(repeat):
            start = time.perf_counter()
            result = segmenter(photo)
            times.append(time.perf_counter() - start)
    assert result.label_map.shape == (height, width)
    return {"size": size, "path": path, "load_s": load_s, "seconds": min(times),
            "peak_rss_gib": peak_rss_gib()}


def measure_stream(model: str, checkpoint: str, size: str, args: argparse.Namespace) -> dict:
    """A stream of ``args.photos`` random photos of ``size``, in this process; with the share of
    the steady-state wall time spent inside the crop forward passes."""
    import numpy as np
    import torch

    from vitadapter import Segmenter
    from vitadapter.backends.torch import TorchRunner
    from vitadapter.stream import segment_stream

    inside = [0.0]
    forward = TorchRunner.forward

    def timed(self: TorchRunner, crops: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = forward(self, crops)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        inside[0] += time.perf_counter() - start
        return out

    TorchRunner.forward = timed  # type: ignore[method-assign]
    width, height = (int(v) for v in size.split("x"))
    options = {"device": args.device, "batch_windows": args.batch_windows,
               "precision": args.precision}
    if model == "tiny":
        segmenter = Segmenter(config=TINY_CONFIG, checkpoint=TINY_CHECKPOINT, **options)
    else:
        segmenter = Segmenter(args.preset, checkpoint=checkpoint, **options)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
              for _ in range(args.photos)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = []
    for _, result in segment_stream(segmenter, images):
        assert not isinstance(result, Exception), result
        assert result.label_map.shape == (height, width)
        done.append(time.perf_counter())
        if len(done) == 1:
            inside[0] = 0.0  # the steady state: forward passes after the first result
    steady = (len(done) - 1) / (done[-1] - done[0])
    return {"model": model if model == "tiny" else args.preset, "size": size,
            "photos": args.photos, "precision": args.precision, "first_s": done[0] - start,
            "steady_photos_per_s": steady, "steady_s_per_photo": 1 / steady,
            "forward_share": inside[0] / (done[-1] - done[0]),
            "peak_rss_gib": peak_rss_gib(), "load": (load + os.getloadavg()[0]) / 2}


def stream_table(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "random.safetensors"
        if "seed" in args.models:
            write_random_checkpoint(checkpoint, args.preset)
        rows = [run_case(__file__, model, str(checkpoint), args.size, "--stream",
                         "--photos", str(args.photos), "--device", args.device,
                         "--batch-windows", str(args.batch_windows),
                         "--precision", args.precision, "--preset", args.preset)
                for model in args.models]
    print(f"segment_stream, {args.size} photos, batch_windows {args.batch_windows}, "
          f"{args.precision}, {args.device}")
    print("| model | photos | first photo s | steady s / photo | steady photos / s "
          "| forward share | peak RSS GiB | load average |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['photos']} | {r['first_s']:.2f} | "
              f"{r['steady_s_per_photo']:.2f} | {r['steady_photos_per_s']:.3f} | "
              f"{100 * r['forward_share']:.0f} % | {r['peak_rss_gib']:.2f} | {r['load']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "4000x3000"])
    parser.add_argument("--paths", nargs="+", default=["fast", "reference"],
                        choices=["fast", "reference"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--stream", action="store_true",
                        help="first photo and steady state of a stream (segment_stream)")
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=["tiny", "seed"])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--batch-windows", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--preset", default=PRESET,
                        help="the preset of --models seed (random weights)")
    parser.add_argument("--case", nargs=3, metavar=("CHECKPOINT", "SIZE", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream and args.photos < 2:
        parser.error("--photos must be at least 2 (the first photo is the warm-up)")
    if args.stream and args.case:
        print(json.dumps(measure_stream(*args.case, args)))
        return
    if args.stream:
        stream_table(args)
        return
    if args.case:
        print(json.dumps(measure(*args.case[:2], args.device, args.case[2], args.repeat)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "random.safetensors"
        write_random_checkpoint(checkpoint)
        rows = [run_case(__file__, str(checkpoint), size, path, "--device", args.device,
                         "--repeat", str(args.repeat))
                for size in args.sizes for path in args.paths]
    print("| photo | path | load s | seconds / photo | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['path']} | {r['load_s']:.1f} | {r['seconds']:.1f} | "
              f"{r['peak_rss_gib']:.2f} |")
    by = {(r["size"], r["path"]): r["seconds"] for r in rows}
    for size in args.sizes:
        if (size, "fast") in by and (size, "reference") in by:
            print(f"{size}: fast is {by[(size, 'reference')] / by[(size, 'fast')]:.2f}x "
                  "the reference path (same run)")


if __name__ == "__main__":
    main()

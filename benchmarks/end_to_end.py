"""End-to-end seconds per photo and peak RSS with the full seed preset (random weights).

Each measurement runs in its own process (peak RSS is a per-process high-water mark): the model
is written once as a synthetic safetensors checkpoint, then every case loads it the way a user
would (``Segmenter`` -> memory-mapped safetensors) and segments one photo of the given size.

    python benchmarks/end_to_end.py [--sizes 640x480 4000x3000] [--device cpu] [--repeat 1]
                                    [--paths fast reference]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_common import PRESET, peak_rss_gib, run_case, write_random_checkpoint


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "4000x3000"])
    parser.add_argument("--paths", nargs="+", default=["fast", "reference"],
                        choices=["fast", "reference"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--case", nargs=3, metavar=("CHECKPOINT", "SIZE", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
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

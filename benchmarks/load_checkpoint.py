"""Time and peak RSS to load the full-preset checkpoint into a ready model, per file format.

A random full-size checkpoint is written once as safetensors and as an official-style ``.pth``;
each load runs in its own process the way ``Segmenter`` does it (build on the meta device, fill
from the file; read into memory, never mapped). The files were just written, so they load from
the page cache: a cold disk adds its read time.

    python benchmarks/load_checkpoint.py [--formats safetensors pth] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_common import PRESET, peak_rss_gib, run_case, write_random_checkpoint


def measure(checkpoint: str, device: str) -> dict:
    """One load, in this process."""
    from vitadapter.backends.torch import load_model

    start = time.perf_counter()
    load_model(PRESET, checkpoint, device=device)
    return {"format": Path(checkpoint).suffix.lstrip("."),
            "load_s": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["safetensors", "pth"],
                        choices=["safetensors", "pth"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.device)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for fmt in args.formats:
            path = Path(tmp) / f"random.{fmt}"
            write_random_checkpoint(path)
            size = path.stat().st_size / 2**30
            rows.append({**run_case(__file__, str(path), "--device", args.device),
                         "size_gib": size})
    print("| format | file GiB | load s (build + fill) | peak RSS GiB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['size_gib']:.2f} | {r['load_s']:.2f} | "
              f"{r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()

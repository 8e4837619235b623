"""Seconds and peak RSS of the slide merge alone: numpy (ONNX path) vs torch (PyTorch path).

Synthetic window scores with the seed preset's geometry (171 classes, 896 crops, stride 512):
``peaked`` scores (one class dominates each 16x16 block of a window, as a trained model's do)
and ``uniform`` ones (random, every class close: the worst case for the torch shortcut).
Each case runs in its own process (peak RSS is a high-water mark).

    python benchmarks/merge.py [--sizes 640x480 4000x3000] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

from bench_common import PRESET, peak_rss_gib, run_case


def slides(size: str, kind: str, device: str) -> tuple[list, list]:
    """The numpy and device slides of one photo size."""
    import numpy as np
    import torch

    from vitadapter.backends.torch_merge import DeviceSlide
    from vitadapter.config.presets import PRESETS
    from vitadapter.pipeline.preprocess import preprocess
    from vitadapter.pipeline.windows import SlideScores, sliding_windows

    cfg = PRESETS[PRESET].inference
    width, height = (int(v) for v in size.split("x"))
    view = preprocess(np.zeros((height, width, 3), np.uint8), cfg)
    windows = sliding_windows(view.image.shape[1], view.image.shape[2], cfg.crop_size,
                              cfg.stride)
    rng = np.random.default_rng(0)
    side = cfg.crop_size[0] // 4
    scores = []
    for _ in windows:
        if kind == "uniform":
            scores.append(rng.random((171, side, side), dtype=np.float32))
            continue
        block = rng.random((171, side, side), dtype=np.float32) * np.float32(0.05)
        top = rng.integers(0, 171, (side // 16, side // 16)).repeat(16, 0).repeat(16, 1)
        np.put_along_axis(block, top[None], np.float32(0.9), 0)
        scores.append(block)
    numpy_slide = SlideScores(view, windows, scores, cfg.crop_size)
    device_slide = DeviceSlide(view, windows, [torch.from_numpy(s).to(device) for s in scores],
                               cfg.crop_size)
    return [numpy_slide], [device_slide]


def measure(size: str, kind: str, merge: str, device: str, threads: int) -> dict:
    import torch

    from vitadapter.backends.torch_merge import merge_on_device
    from vitadapter.pipeline.merge import merge_views

    torch.set_num_threads(threads)
    numpy_slides, device_slides = slides(size, kind, device)
    base_rss = peak_rss_gib()
    start = time.perf_counter()
    if merge == "numpy":
        merge_views(numpy_slides)
    else:
        with torch.inference_mode():
            merge_on_device(device_slides)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return {"size": size, "scores": kind, "merge": merge, "seconds": time.perf_counter() - start,
            "peak_rss_gib": peak_rss_gib(), "inputs_rss_gib": base_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "4000x3000"])
    parser.add_argument("--scores", nargs="+", default=["peaked", "uniform"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "SCORES", "MERGE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(*args.case, args.device, args.threads)))
        return
    rows = [run_case(__file__, size, kind, merge, "--device", args.device,
                     "--threads", str(args.threads))
            for size in args.sizes for kind in args.scores for merge in ("numpy", "torch")]
    print("| photo | scores | merge | seconds | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['scores']} | {r['merge']} | {r['seconds']:.2f} | "
              f"{r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()

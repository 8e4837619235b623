"""One crop in onnxruntime vs PyTorch: seconds, peak RSS and the exported file's size.

Builds the preset with random weights (seed 0), times one crop forward in PyTorch (the default
path), exports it with ``export_onnx`` to a temporary folder, then times the same crop in
onnxruntime and checks the scores agree. Each backend runs in its own process, so each peak
RSS is its own high-water mark (the PyTorch figure is taken before the export starts).

    python benchmarks/onnx_vs_torch.py [--preset NAME | --config CONFIG.json] [--device cpu]
                                       [--repeat 1] [--warmup 1] [--threads N]

Prints a markdown table. On 2 CPU cores the full preset takes several minutes in all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import PRESET, peak_rss_gib


def timed(run: Callable[[Any], Any], crop: Any, warmup: int,
          repeat: int) -> tuple[list[float], Any]:
    out = None
    for _ in range(warmup):
        out = run(crop)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = run(crop)
        times.append(time.perf_counter() - start)
    return times, out


def crop_array(size: int) -> Any:
    import numpy as np

    return np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)


def torch_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from vitadapter import build_model
    from vitadapter.backends.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(args.config or args.preset, device=args.device)
    build_s = time.perf_counter() - start
    crop = torch.from_numpy(crop_array(model.crop_size)).to(args.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = model(x)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    times, scores = timed(run, crop, args.warmup, args.repeat)
    np.save(work / "torch_scores.npy", scores.float().cpu().numpy())
    rss = peak_rss_gib()
    start = time.perf_counter()
    out = export_onnx(model.float(), work / "model.onnx", weights="random")
    export_s = time.perf_counter() - start
    data = out.with_name(out.name + ".data")
    return {"load_s": build_s, "times": times, "peak_rss_gib": rss,
            "export_s": export_s, "export_peak_rss_gib": peak_rss_gib(),
            "onnx_mib": out.stat().st_size / 2**20,
            "data_mib": data.stat().st_size / 2**20 if data.exists() else 0.0,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "threads": torch.get_num_threads()}


def onnx_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np

    from vitadapter.backends.onnx import OnnxRunner
    from vitadapter.cli.common import onnx_providers

    providers = onnx_providers(args.device)
    start = time.perf_counter()
    runner = OnnxRunner.load(work / "model.onnx", providers=providers, threads=args.threads)
    load_s = time.perf_counter() - start
    crop = crop_array(runner.info.config.backbone.img_size)
    times, scores = timed(runner, crop, args.warmup, args.repeat)
    reference = np.load(work / "torch_scores.npy")
    error = float(np.abs(scores - reference).max() / np.abs(reference).max())
    return {"load_s": load_s, "times": times, "peak_rss_gib": peak_rss_gib(),
            "max_rel_diff": error, "finite": bool(np.isfinite(scores).all()),
            "torch_imported": "torch" in sys.modules, "provider": runner.providers[0]}


def run_phase(phase: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--workdir", str(work),
           "--device", args.device, "--repeat", str(args.repeat), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--preset", args.preset]
    if args.config:
        cmd += ["--config", args.config]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        sys.exit(f"the {phase} phase failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--config", default=None, help="a config.json instead of a preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--phase", choices=("torch", "onnx"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        phase = torch_phase if args.phase == "torch" else onnx_phase
        print(json.dumps(phase(args, args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="onnx-vs-torch-") as tmp:
        pt = run_phase("torch", args, Path(tmp))
        ort = run_phase("onnx", args, Path(tmp))
    name = args.config or args.preset
    best_pt, best_ort = min(pt["times"]), min(ort["times"])
    print(f"\n{name}: {pt['params_m']:.0f}M parameters, {args.device}, {pt['threads']} "
          f"threads, best of {args.repeat} after {args.warmup} warm-up\n")
    print("| backend | load s | s / crop | vs PyTorch | peak RSS GiB |")
    print("|---|---|---|---|---|")
    print(f"| PyTorch (default path) | {pt['load_s']:.1f} (build) | {best_pt:.2f} | 1.00 | "
          f"{pt['peak_rss_gib']:.2f} |")
    print(f"| onnxruntime ({ort['provider']}) | {ort['load_s']:.1f} (session) | "
          f"{best_ort:.2f} | {best_ort / best_pt:.2f} | {ort['peak_rss_gib']:.2f} |")
    print(f"\nexport: {pt['export_s']:.1f} s, peak RSS {pt['export_peak_rss_gib']:.2f} GiB; "
          f"model.onnx {pt['onnx_mib']:.1f} MiB + model.onnx.data {pt['data_mib']:.1f} MiB")
    print(f"scores: max |onnxruntime - PyTorch| / max |PyTorch| = {ort['max_rel_diff']:.2e}"
          f" (finite: {ort['finite']}); torch imported by the onnxruntime process: "
          f"{ort['torch_imported']}")


if __name__ == "__main__":
    main()

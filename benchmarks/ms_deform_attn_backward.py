"""Forward + backward of the fast against the reference multi-scale deformable attention at the
shapes of the full model, gradients w.r.t. value, sampling locations and attention weights.

Same shapes and inputs as ``ms_deform_attn.py``. Times are the best of ``--repeat`` forward +
backward passes after one warm-up, the two paths interleaved in one process so that both see
the same machine load; also their process CPU seconds (all threads), which a loaded machine
hardly changes (with ``--threads 1`` they are what an idle machine's wall time would be). Peak
memory is measured per (shape, path) in a fresh process: the rise of
the CUDA allocator peak, or on Linux CPUs of the RSS high-water mark (reset after the inputs are
built), during one forward + backward, the gradients included, after one pass on a tiny case
(so that one-time lazy initialisation is not counted). Prints one markdown row per
shape; the last column is the largest difference of each gradient relative to the largest
reference gradient (value / weights / locations; on pixel-grid lines, where bilinear
interpolation has a kink, the two paths may round to different sides).

    python benchmarks/ms_deform_attn_backward.py [--device cpu] [--repeat 3] [--threads N]
                                                 [--shape all|pixel_decoder|injector|extractor]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ms_deform_attn import (
    POINTS,
    SHAPES,
    _rss_kib,
    make_inputs,
    measure_peak,
    parse_arguments,
)

PATHS = ("reference", "fast")


def _inputs(name: str, device: str) -> tuple[list[torch.Tensor], list[tuple[int, int]],
                                             torch.Tensor]:
    value, levels, locations, weights = make_inputs(name, device)
    inputs = [value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()]
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                           generator=gen).to(device)
    return inputs, levels, grad_out


def forward_backward(path: str, inputs: list[torch.Tensor], levels: list[tuple[int, int]],
                     grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    from vitadapter.ops import ms_deform_attn, reference_path

    value, locations, weights = inputs
    with reference_path(path == "reference"):
        out = ms_deform_attn(value, levels, locations, weights)
    return torch.autograd.grad(out, inputs, grad_out)


def warm_up(name: str, path: str, device: str) -> None:
    """One forward + backward of ``path`` on a tiny case with the heads, head dim, level count
    and points of ``name``: lazy initialisation (kernels, thread pools) then lies outside the
    measured pass, as in any process that has run the op before."""
    spec = SHAPES[name]
    levels = [(2, 2)] * len(spec["levels"])
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(1, 4 * len(levels), spec["heads"], spec["dim"], generator=gen),
              torch.rand(1, 4, spec["heads"], len(levels), POINTS, 2, generator=gen),
              torch.rand(1, 4, spec["heads"], len(levels), POINTS, generator=gen)]
    inputs = [t.to(device).requires_grad_() for t in inputs]
    grad_out = torch.randn(1, 4, spec["heads"] * spec["dim"], generator=gen).to(device)
    forward_backward(path, inputs, levels, grad_out)


def peak_rise_mib(name: str, path: str, device: str) -> float:
    """Rise of peak memory during one forward + backward after a tiny warm-up pass: CUDA
    allocator peak, or on Linux the RSS high-water mark (reset after the inputs are built,
    through /proc/self/clear_refs)."""
    warm_up(name, path, device)
    inputs, levels, grad_out = _inputs(name, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
    grads = forward_backward(path, inputs, levels, grad_out)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kib("VmHWM") * 1024
    del grads
    return (peak - baseline) / 2**20


def time_both(name: str, device: str, repeat: int,
              ) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Best wall and best process CPU seconds of each path, passes interleaved so both see the
    same machine load; and the largest difference of each gradient relative to the largest
    reference gradient. CPU seconds (all threads together) hardly depend on other processes'
    load: with ``--threads 1`` they are what an idle machine's wall time would be."""
    inputs, levels, grad_out = _inputs(name, device)
    best = dict.fromkeys(PATHS, float("inf"))
    best_cpu = dict.fromkeys(PATHS, float("inf"))
    grads = {}
    for round_ in range(repeat + 1):  # round 0 warms up
        for path in PATHS:
            grads[path] = None
            start, start_cpu = time.perf_counter(), time.process_time()
            grads[path] = forward_backward(path, inputs, levels, grad_out)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if round_:
                best[path] = min(best[path], seconds)
                best_cpu[path] = min(best_cpu[path], cpu)
    diffs = [float((f - r).abs().max() / r.abs().max())
             for f, r in zip(grads["fast"], grads["reference"], strict=True)]
    return best, best_cpu, diffs


def main() -> None:
    args = parse_arguments(__doc__)
    if args.memory_worker:
        print(peak_rise_mib(*args.memory_worker, args.device))
        return

    names = list(SHAPES) if args.shape == "all" else [args.shape]
    print(f"device {args.device}, {args.threads or torch.get_num_threads()} threads, "
          f"best of {args.repeat}; forward + backward w.r.t. value, locations and weights; "
          "peak = rise of peak memory during one pass")
    print("| shape | reference s | fast s | speed-up | reference CPU s | fast CPU s | CPU ratio | "
          "reference peak MiB | fast peak MiB | memory ratio | "
          "max rel diff (value / weights / locations) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        best, cpu, (value, locations, weights) = time_both(name, args.device, args.repeat)
        peak = {path: measure_peak(__file__, name, path, args) for path in PATHS}
        ref, fast = best["reference"], best["fast"]
        ratio = f"{peak['reference'] / peak['fast']:.1f}x" if peak["fast"] >= 1 else "-"
        print(f"| {name} | {ref:.3f} | {fast:.3f} | {ref / fast:.1f}x | {cpu['reference']:.3f} | "
              f"{cpu['fast']:.3f} | {cpu['reference'] / cpu['fast']:.1f}x | "
              f"{peak['reference']:.0f} | {peak['fast']:.0f} | {ratio} | "
              f"{value:.1e} / {weights:.1e} / {locations:.1e} |", flush=True)


if __name__ == "__main__":
    main()

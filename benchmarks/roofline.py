"""Roofline of the crop forward: the share of the machine's own GEMM rate that each preset's
forward reaches, and where the rest of its time goes.

Each preset (``NAME`` or ``NAME@CROP`` for another crop size) runs at each precision in a fresh
process, with the full-size random weights of ``recipe.py`` (a many-class answer) on a crop of
the repository's photo:

* the GEMM rate of the precision's dtype (``--gemm-size``^3 matrix products, best of several,
  of the fastest of PyTorch's kernels for them: ``torch.mm`` and, for float32 on the CPU,
  oneDNN's matmul, which runs at twice MKL's rate on an AMD CPU with AVX-512), measured in that
  process before and after the forwards and between them;
* the crop's FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device
  (matrix products, convolutions, attention);
* seconds per crop: the median of ``--repeat`` forwards after a warm-up (the PyTorch backend's
  forward, ``TorchRunner.forward``, as ``segment`` runs it: with freed blocks kept for reuse,
  ``vitadapter.keep_freed_memory``, unless ``--system-malloc``) that lasts until a forward
  touches almost no new memory pages (the heap grows over the first few forwards, and each
  new page costs a page fault: the steady rate of a stream of crops is what is measured);
* the share of the GEMM rate: the median over the forwards of FLOPs / seconds / the GEMM rate
  measured around that forward (the mean of the rates just before and just after it), with
  its range, so that a machine whose speed drifts during a case does not move the share;
* peak RSS (peak CUDA memory on a GPU), the 1-minute load average before and after, and the
  share of the machine's CPU time other processes took meanwhile (from ``/proc/stat``: on a
  shared machine a busy neighbour makes every parallel region wait, so compare rows measured
  quiet; ``--wait-quiet`` waits for a quiet moment before each case);
* the self time of one more forward's operators (eager on the CPU timed at PyTorch's Python
  dispatch, :class:`OperatorTimer`: ``torch.profiler``'s records grow the heap and move page
  faults onto the operators; compiled, ``torch.profiler``'s; on a GPU its device time): of
  matrix products and convolutions, of attention kernels, of every other operator (the top
  ones listed) and the time no operator accounts for (Python and dispatch overhead, with the
  timer's own: some 10 us per operator call, 7 % of DINOv3-S's 7000; on a GPU, device idle
  time);
  and the rate of the products themselves (FLOPs / their self time, as a share of the GEMM
  rate): the share the forward would reach with nothing between its products, the ceiling
  of the work between them.

``--save DIR`` keeps each forward's class scores; ``--compare DIR`` checks a later run against
them (labels equal outside float32 ties, largest score difference), e.g. a change or
``--compile`` against eager main. ``--compile`` runs the forward through ``torch.compile``
(the backend's ``compile=True``); the warm-up then includes the compile. ``--against JSON``
sets each share beside the same case's in an earlier ``--json`` run of the same machine
(``benchmarks/baselines/``) and exits with status 1 where one fell by more than
``--tolerance`` points, so that a change that slows a forward shows.

    python benchmarks/roofline.py [--presets NAME[@CROP] ...] [--device cpu|cuda]
        [--precisions fp32 bf16] [--repeat 3] [--threads N] [--top 8] [--gemm-size 2048]
        [--json PATH] [--save DIR] [--compare DIR] [--compile] [--system-malloc]
        [--against JSON [--tolerance POINTS]]

On CUDA the default precisions are fp32 (TF32 off, as the backend runs it) and bf16, each
against the GEMM rate of its dtype (a GPU needs larger products to reach its peak:
``--gemm-size 8192``), and the profile's shares are of device time, "untracked" being the time
the GPU waited for the host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench_common import PRESET, peak_rss_gib, run_case

# One of each family; a new family is one more name here.
DEFAULT_PRESETS = (
    "ade20k-deit-adapter-t-upernet-512",     # DeiT-T ViT-Adapter + UperNet
    "ade20k-augreg-adapter-l-upernet-512",   # AugReg-L ViT-Adapter + UperNet
    "cocostuff10k-beit-adapter-b-m2f-512",   # BEiT-B Adapter + Mask2Former
    PRESET,                                  # BEiT-L Adapter + Mask2Former at 896 (the seed)
    "dinov3-vits16-adapter-m2f",             # DINOv3 Adapters (no injector) + Mask2Former
    "dinov3-vitb16-adapter-m2f",
    "dinov3-vitl16-adapter-m2f",
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Profiler keys (lower case) of matrix products and convolutions: aten operators on the CPU,
# kernel names on a GPU.
_GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
             "aten::matmul", "aten::linear", "aten::einsum", "aten::_addmm_activation",
             "mkldnn::_linear_pointwise"}
_GEMM_WORDS = ("conv", "gemm", "cutlass", "xmma", "cublas", "wgmma", "winograd", "fprop",
               "cudnn")
_ATTENTION_WORDS = ("scaled_dot_product", "flash", "fmha", "attention")


# --- one case, in its own process -------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far; the
    machine's from /proc/stat (0 where there is none)."""
    own = sum(os.times()[:2])
    try:
        with open("/proc/stat") as file:
            fields = [int(v) for v in file.readline().split()[1:]]
    except OSError:
        return 0.0, own
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own


def others_busy(start: tuple[float, float], wall: float) -> float:
    """Share of the machine's cores that other processes kept busy since ``start``."""
    busy, own = cpu_seconds()
    return max(0.0, (busy - start[0]) - (own - start[1])) / (wall * (os.cpu_count() or 1))


def wait_quiet(limit: float, threshold: float = 0.1, window: float = 3.0) -> float:
    """Wait (up to ``limit`` seconds) until other processes keep less than ``threshold`` of
    the cores busy over ``window`` seconds; returns that share when the wait ended."""
    deadline = time.monotonic() + limit
    while True:
        start = cpu_seconds()
        time.sleep(window)
        share = others_busy(start, window)
        if share < threshold or time.monotonic() >= deadline:
            return share


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_kernels(device: str, dtype: torch.dtype, size: int) -> dict[str, Callable[[], object]]:
    """``size``^3 products of ``dtype`` by each of PyTorch's kernels for them: ``torch.mm``
    (MKL on an x86 CPU) and, for float32 on the CPU, oneDNN's matmul (what the fast path runs:
    MKL runs its AVX2 code on AMD CPUs, at half oneDNN's AVX-512 rate on a Zen 5)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    kernels: dict[str, Callable[[], object]] = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    # Whatever the models run with (``VITADAPTER_MATMUL``): the machine's rate is the best.
    if (device == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        weight = b.t().contiguous()
        kernels["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, weight, None, "none",
                                                                         [], "")
    return kernels


def kernel_rate(run: Callable[[], object], size: int, device: str, repeat: int) -> float:
    """Best FLOP/s of ``run`` (one ``size``^3 product); each timing spans enough products for
    50 ms (a GPU does one in microseconds)."""
    run()
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    inner = max(1, round(0.05 / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            run()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * size**3 / best


def gemm_rate(device: str, dtype: torch.dtype, size: int, repeat: int = 5,
              by_kernel: dict[str, float] | None = None) -> float:
    """The machine's GEMM rate for ``dtype``: the best FLOP/s of the fastest of
    :func:`gemm_kernels` (each kernel's rate also into ``by_kernel`` when given)."""
    rates = {name: kernel_rate(run, size, device, repeat)
             for name, run in gemm_kernels(device, dtype, size).items()}
    if by_kernel is not None:
        by_kernel.update(rates)
    return max(rates.values())


def minor_faults() -> int:
    """This process's minor page faults so far: pages the kernel handed it on first touch."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warm_up_allocator(forward, crop: torch.Tensor, device: str, limit: int = 6,
                      steady: int = 256) -> list[int]:
    """More forwards until one touches fewer than ``steady`` new pages (at most ``limit``);
    returns each one's minor page faults.

    The heap grows over the first few forwards (a 512 Mask2Former crop writes a 157 MB score
    map beside the last one's) and every new page costs a fault on first touch: 30-40
    thousand faults, up to 0.3 s, in one forward of DINOv3-S here, two or three forwards after
    the first. A stream of crops (``segment`` on a folder) runs at the steady rate after that."""
    faults: list[int] = []
    while len(faults) < limit and (not faults or faults[-1] >= steady):
        before = minor_faults()
        forward(crop)
        synchronize(device)
        faults.append(minor_faults() - before)
    return faults


def preset_config(spec: str):  # -> ModelConfig
    """``NAME`` or ``NAME@CROP``: the preset, at another crop size when given."""
    from vitadapter import get_preset
    from vitadapter.cli.export_onnx import with_crop

    name, _, crop = spec.partition("@")
    cfg = get_preset(name)
    if not crop:
        return cfg
    if not crop.isdigit():
        raise ValueError(f"the crop after '@' is a size in pixels (NAME@512), not {crop!r}")
    return with_crop(cfg, int(crop))


def family(cfg) -> str:  # cfg: ModelConfig
    b = cfg.backbone
    return f"{b.kind} {b.embed_dim}x{b.depth} + {cfg.head.kind}"


def count_flops(cfg) -> float:
    """FLOPs of one crop, counted on the meta device (nothing is computed); the reference
    path spells attention as matrix products, which the counter sees everywhere."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitadapter import build_model
    from vitadapter.ops import reference_path

    model = build_model(cfg, device="meta").requires_grad_(False)
    size = cfg.inference.crop_size
    crop = torch.empty(1, cfg.backbone.in_channels, *size, device="meta")
    with FlopCounterMode(display=False) as counter, reference_path(), torch.no_grad():
        model(crop)
    return float(counter.get_total_flops())


def photo_crop(cfg) -> torch.Tensor:
    """The first slide window of the repository's photo, preprocessed as ``segment`` does."""
    from recipe import default_photo
    from vitadapter.pipeline.preprocess import preprocess

    height, width = cfg.inference.crop_size
    view = preprocess(default_photo(), cfg.inference)
    return torch.from_numpy(np.ascontiguousarray(view.image[None, :, :height, :width]))


def classify(key: str) -> str:
    name = key.lower()
    if name in _GEMM_OPS or any(w in name for w in _GEMM_WORDS):
        return "gemm"
    if any(w in name for w in _ATTENTION_WORDS):
        return "attention"
    return "other"


class OperatorTimer(TorchDispatchMode):
    """Wall time of each operator call that reaches PyTorch's Python dispatch (the operators a
    forward calls, not those they call inside), by name. On the CPU, where operators run
    synchronously, this is their own time without the profiler's records, which grow the heap
    and charge its new pages' faults to whichever operator first writes them (99 thousand page
    faults in the seed's profiled forward in one run). A compiled forward runs uncompiled
    under it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[torch._ops.OpOverload, list] = {}  # [seconds, calls]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        record = self.records.setdefault(func, [0.0, 0])
        record[0] += elapsed
        record[1] += 1
        return out

    def totals(self) -> list[tuple[float, str, int]]:
        """(self us, operator named as the profiler names it, calls) per operator."""
        merged: dict[str, list] = {}
        for func, (seconds, calls) in self.records.items():
            row = merged.setdefault(str(func.overloadpacket).replace(".", "::", 1), [0.0, 0])
            row[0] += seconds
            row[1] += calls
        return [(seconds * 1e6, name, calls) for name, (seconds, calls) in merged.items()]


def _self_times(forward, crop: torch.Tensor, device: str,
                timer: bool) -> tuple[float, list[tuple]]:
    """Wall time of one forward (us) and (self us, operator, calls) for its operators: from
    :class:`OperatorTimer` with ``timer`` (an eager CPU forward), else from ``torch.profiler``
    (device time on a GPU; a compiled forward, which runs uncompiled under a dispatch mode)."""
    if timer:
        operators = OperatorTimer()
        with operators:
            start = time.perf_counter()
            forward(crop)
            wall_us = (time.perf_counter() - start) * 1e6
        return wall_us, operators.totals()
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        synchronize(device)
        start = time.perf_counter()
        forward(crop)
        synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    return wall_us, [(float(getattr(event, "self_device_time_total", 0.0)
                            or getattr(event, "self_cuda_time_total", 0.0)) if cuda
                      else float(event.self_cpu_time_total), event.key, int(event.count))
                     for event in prof.key_averages()]


def profile_forward(forward, crop: torch.Tensor, device: str, top: int, timer: bool) -> dict:
    """Self time by kind of operator over one timed forward (:func:`_self_times`), as shares
    of its wall time (device time on a GPU); the ``top`` other operators by self time."""
    wall_us, times = _self_times(forward, crop, device, timer)
    totals = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    others = []
    for self_us, name, calls in times:
        if self_us <= 0:
            continue
        kind = classify(name)
        totals[kind] += self_us
        if kind == "other":
            others.append((self_us, name, calls))
    others.sort(reverse=True)
    share = {k: v / wall_us for k, v in totals.items()}
    share["untracked"] = max(0.0, 1.0 - sum(share.values()))
    return {"profile_wall_s": wall_us / 1e6,
            "time_base": "device" if device.startswith("cuda") else "cpu", "shares": share,
            "top_other": [{"op": key, "ms": us / 1e3, "share": us / wall_us, "calls": calls}
                          for us, key, calls in others[:top]]}


def quietest_profile(forward, crop: torch.Tensor, device: str, top: int, timer: bool,
                     tries: int = 3, steady: int = 256) -> dict:
    """:func:`profile_forward` up to ``tries`` times, until a timed forward touches fewer than
    ``steady`` new pages; the one that touched the fewest, with that count. A forward can still
    grow the heap after the warm-up (the crop's 150 MB of scores, now and then), and each
    fault's cost is charged to whichever operator first wrote the page."""
    best: dict | None = None
    for _ in range(tries):
        before = minor_faults()
        profile = profile_forward(forward, crop, device, top, timer)
        profile["profile_faults"] = minor_faults() - before
        if best is None or profile["profile_faults"] < best["profile_faults"]:
            best = profile
        if best["profile_faults"] < steady:
            break
    assert best is not None
    return best


def measure(spec: str, precision: str, device: str, repeat: int, threads: int, top: int,
            gemm_size: int, out: Path, compile_model: bool, system_malloc: bool) -> dict:
    """One preset at one precision, in this process."""
    from recipe import recipe_weights, set_mask_feature_bias
    from vitadapter import build_model, keep_freed_memory
    from vitadapter.backends.precision import autocast
    from vitadapter.backends.torch import TorchRunner

    if threads:
        torch.set_num_threads(threads)
    row: dict = {"preset": spec, "precision": precision, "device": device,
                 "threads": torch.get_num_threads(), "compiled": compile_model,
                 "kept_freed_memory": not system_malloc and keep_freed_memory(),
                 "load_start": os.getloadavg()[0]}
    clock, machine_start = time.perf_counter(), cpu_seconds()
    dtype = DTYPES[precision]
    row["gemm_kernels"] = {}
    row["gemm_before"] = gemm_rate(device, dtype, gemm_size, by_kernel=row["gemm_kernels"])
    cfg = preset_config(spec)
    row.update(family=family(cfg), crop=cfg.inference.crop_size[0], flops=count_flops(cfg))

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(cfg, device=device)
    recipe_weights(model)
    row["build_s"] = time.perf_counter() - start
    crop = photo_crop(cfg).to(device)
    # The recipe's mask-feature bias comes from an fp32 eager forward: for fp32 eager it is
    # also the warm-up.
    start = time.perf_counter()
    with torch.inference_mode(), autocast("fp32", torch.device(device)):
        set_mask_feature_bias(model, lambda: model(crop))
    synchronize(device)
    row["warmup_s"] = time.perf_counter() - start
    kwargs = {"compile": True} if compile_model else {}
    runner = TorchRunner(model, precision, owns_model=True, **kwargs)  # type: ignore[arg-type]
    if precision != "fp32" or compile_model:
        start = time.perf_counter()
        runner.forward(crop)
        synchronize(device)
        row["warmup_s"] = time.perf_counter() - start
    row["warmup_faults"] = warm_up_allocator(runner.forward, crop, device)
    # The GEMM rate between the forwards too: each forward's share is of the rate measured
    # around it, so that a machine whose speed drifts (a shared VM: 15 % within one case
    # here) does not move the share.
    times, rates = [], [gemm_rate(device, dtype, gemm_size, repeat=3)]
    faults = []
    for _ in range(repeat):
        synchronize(device)
        before = minor_faults()
        start = time.perf_counter()
        scores = runner.forward(crop)
        synchronize(device)
        times.append(time.perf_counter() - start)
        faults.append(minor_faults() - before)
        rates.append(gemm_rate(device, dtype, gemm_size, repeat=3))
    row["times"], row["gemm_rates"], row["faults"] = times, rates, faults
    row["seconds"] = statistics.median(times)
    shares = [row["flops"] / seconds / ((before + after) / 2)
              for seconds, before, after in zip(times, rates, rates[1:], strict=False)]
    row["share"] = statistics.median(shares)
    row["share_range"] = [min(shares), max(shares)]
    row.update(quietest_profile(runner.forward, crop, device, top,
                                timer=not (compile_model or device.startswith("cuda"))))
    row["gemm_after"] = gemm_rate(device, dtype, gemm_size)
    row["gemm"] = statistics.median(rates)
    # The share if nothing ran between the matrix products: the products' own rate.
    product_s = row["profile_wall_s"] * (row["shares"]["gemm"] + row["shares"]["attention"])
    row["products_share"] = row["flops"] / product_s / row["gemm"] if product_s else 0.0
    row["peak_gib"] = (torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda")
                       else peak_rss_gib())
    row["load_end"] = os.getloadavg()[0]
    row["others_busy"] = others_busy(machine_start, time.perf_counter() - clock)
    scores = scores[0].float().cpu()
    top2 = scores.topk(2, dim=0).values
    np.savez(out, scores=scores.numpy(), labels=scores.argmax(0).numpy().astype(np.int16),
             margin=(top2[0] - top2[1]).numpy())
    row["classes"] = int(np.unique(scores.argmax(0).numpy()).size)
    return row


# --- the parent: one process per case, tables ---------------------------------------------------


def case_name(spec: str, precision: str) -> str:
    return f"{spec.replace('@', '_')}-{precision}.npz"


def compare(reference: Path, other: Path, tie: float = 1e-4) -> dict:
    """Labels of ``other`` against ``reference``: differing pixels, and those among them where
    the reference's top-2 margin is at least ``tie`` x the score scale (not a float32 tie);
    the largest score difference relative to that scale."""
    with np.load(reference) as ref, np.load(other) as oth:
        scale = float(np.abs(ref["scores"]).max())
        differ = ref["labels"] != oth["labels"]
        clear = differ & (ref["margin"] >= tie * scale)
        diff = float(np.abs(ref["scores"] - oth["scores"]).max()) / scale
    return {"pixels": int(differ.size), "differ": int(differ.sum()),
            "differ_outside_ties": int(clear.sum()), "max_rel_diff": diff}


def case_key(row: dict) -> tuple:
    return (row["preset"], row["crop"], row["precision"], row["device"], row["compiled"])


def load_run(path: Path) -> dict:
    """An earlier ``--json`` run, read before any case runs so that a wrong path fails at once."""
    try:
        run = json.loads(path.read_text())
        run["cases"] = {case_key(r): r for r in run["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--against {path}: not a roofline.py --json file ({error})") from None
    return run


def against(name: Path, earlier: dict, rows: list[dict], tolerance: float) -> list[str]:
    """Print each case's share beside the same case's in an earlier run (of the same machine:
    the shares are of each process's own GEMM rate, so the machine's drift mostly cancels,
    but another CPU has other ceilings); return the cases whose share fell by more than
    ``tolerance`` (0.05: five points)."""
    if earlier.get("machine", {}).get("cpu") != machine().get("cpu"):
        print(f"\nNote: {name} was measured on {earlier.get('machine')}, not this machine.")
    print(f"\nAgainst {name} (shares of each process's GEMM rate):\n")
    print("| preset | precision | share then | share now | change |")
    print("|---|---|---|---|---|")
    fallen = []
    for r in rows:
        old = earlier["cases"].get(case_key(r))
        if old is None:
            print(f"| {r['preset']} | {r['precision']} | (not measured) | {r['share']:.0%} | |")
            continue
        change = r["share"] - old["share"]
        # Shares of different GEMM kernels' rates do not compare (MKL's torch.mm alone ran at
        # half oneDNN's rate on an AMD CPU): say so rather than fail.
        kernels_then = sorted(old.get("gemm_kernels", {"torch.mm": 0}))
        comparable = kernels_then == sorted(r.get("gemm_kernels", {"torch.mm": 0}))
        print(f"| {r['preset']} | {r['precision']} | {old['share']:.0%} | {r['share']:.0%} | "
              + (f"{change * 100:+.1f} points |" if comparable else
                 f"(not comparable: the GEMM rate then was {', '.join(kernels_then)}'s) |"))
        if comparable and change < -tolerance:
            fallen.append(f"{r['preset']} {r['precision']}: {old['share']:.0%} -> "
                          f"{r['share']:.0%}")
    return fallen


def machine() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as file:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in file
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _share(row: dict) -> str:
    """The share, with the range over the forwards where the run recorded one."""
    low, high = row.get("share_range", (row["share"], row["share"]))
    return f"{row['share']:.0%}" + (f" ({low:.0%}-{high:.0%})" if high - low >= 0.005 else "")


def _kernels(row: dict) -> str:
    """Each GEMM kernel's rate at the start where there were several (runs before this
    column existed timed ``torch.mm`` alone)."""
    kernels = row.get("gemm_kernels", {})
    if len(kernels) < 2:
        return ""
    return " (" + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in kernels.items()) + ")"


def _warm_up(row: dict) -> str:
    """The forwards before the timed ones (the first sets the recipe's mask bias), with the
    new pages each touched; runs before this column existed recorded none."""
    faults = row.get("warmup_faults")
    if faults is None:
        return ""
    return f"{1 + len(faults)} ({', '.join(f'{n:,}' for n in faults)})"


def print_tables(rows: list[dict], repeat: int, top: int) -> None:
    print("| preset | family | crop | precision | TFLOP / crop | s / crop (median of "
          f"{repeat}) | GEMM GFLOP/s before / after | share of GEMM (range over the forwards) "
          "| warm-up forwards (page faults) | peak GiB | classes | load avg | others busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = (r["precision"] + (" compiled" if r["compiled"] else "")
                + ("" if r["kept_freed_memory"] else " system malloc"))
        print(f"| {r['preset']} | {r['family']} | {r['crop']} | {mode} | "
              f"{r['flops'] / 1e12:.3f} | {r['seconds']:.2f} | "
              f"{r['gemm_before'] / 1e9:.0f} / {r['gemm_after'] / 1e9:.0f}{_kernels(r)} | "
              f"{_share(r)} | {_warm_up(r)} | {r['peak_gib']:.2f} | {r['classes']} | "
              f"{r['load_start']:.1f} / {r['load_end']:.1f} | {r['others_busy']:.0%} |")
    print(f"\nWhere the time goes (self time in one more forward, its operators timed at the "
          f"dispatch on a CPU, by torch.profiler on a GPU; share of its wall time; top {top} "
          "other operators; that forward's page faults, whose cost lands on the operator that "
          "first wrote each new page):\n")
    print("| preset | precision | matmul / conv | attention | other ops | untracked | "
          "products at (share of GEMM) | page faults | top other operators |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["shares"]
        ops = ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.1%}"
                        for o in r["top_other"])
        print(f"| {r['preset']} | {r['precision']} | {s['gemm']:.0%} | {s['attention']:.0%} | "
              f"{s['other']:.0%} | {s['untracked']:.0%} | {r['products_share']:.0%} | "
              f"{r.get('profile_faults', '')} | {ops} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        metavar="NAME[@CROP]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", choices=sorted(DTYPES),
                        help="default: fp32 on the CPU, fp32 and bf16 on CUDA")
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--top", type=int, default=8, help="other operators listed")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--save", type=Path, help="keep each case's class scores in DIR")
    parser.add_argument("--compare", type=Path,
                        help="compare each case's labels with those saved in DIR")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's allocator as it is (the command line keeps freed "
                             "blocks for reuse)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each case, wait up to SECONDS for the other processes "
                             "to leave the cores (nearly) idle")
    parser.add_argument("--against", type=Path, metavar="JSON",
                        help="compare each share with an earlier --json run of this machine; "
                             "exit status 1 if one fell by more than --tolerance")
    parser.add_argument("--tolerance", type=float, default=5.0, metavar="POINTS",
                        help="share points a case may lose against --against (default 5)")
    parser.add_argument("--case", nargs=3, metavar=("PRESET", "PRECISION", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        spec, precision, out = args.case
        print(json.dumps(measure(spec, precision, args.device, args.repeat, args.threads,
                                 args.top, args.gemm_size, Path(out), args.compile,
                                 args.system_malloc)))
        return

    from vitadapter.errors import ConfigError

    for spec in args.presets:  # a wrong name fails here, not after the earlier cases ran
        try:
            preset_config(spec)
        except (ConfigError, ValueError) as error:
            parser.error(f"--presets {spec}: {error}")
    earlier = load_run(args.against) if args.against else None
    precisions = args.precisions or (["fp32", "bf16"] if args.device.startswith("cuda")
                                     else ["fp32"])
    common = ["--device", args.device, "--repeat", str(args.repeat), "--threads",
              str(args.threads), "--top", str(args.top), "--gemm-size", str(args.gemm_size),
              *(["--compile"] if args.compile else []),
              *(["--system-malloc"] if args.system_malloc else [])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitadapter-roofline-") as tmp:
        folder = args.save or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for spec in args.presets:
            for precision in precisions:
                out = folder / case_name(spec, precision)
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                row = run_case(__file__, spec, precision, str(out), *common)
                if args.compare:
                    row["compare"] = compare(args.compare / case_name(spec, precision), out)
                rows.append(row)
    print(f"\n{args.device}: {machine()}\n")
    print_tables(rows, args.repeat, args.top)
    if args.compare:
        print(f"\nAgainst {args.compare}:\n")
        print("| preset | precision | label pixels | differ | differ outside ties | "
              "max score diff / scale |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            c = r["compare"]
            print(f"| {r['preset']} | {r['precision']} | {c['pixels']} | {c['differ']} | "
                  f"{c['differ_outside_ties']} | {c['max_rel_diff']:.1e} |")
    if args.json:
        from vitadapter.files import write_text_atomic

        write_text_atomic(args.json, json.dumps({"machine": machine(), "rows": rows},
                                                indent=1))
    if earlier is not None:
        fallen = against(args.against, earlier, rows, args.tolerance / 100)
        if fallen:
            raise SystemExit("share fell by more than {} points: {}".format(
                args.tolerance, "; ".join(fallen)))


if __name__ == "__main__":
    main()

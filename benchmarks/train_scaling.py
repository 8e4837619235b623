"""Training throughput of `vitadapter train` under torchrun: 1 process against 2 (gloo, CPU).

Writes a small synthetic ``custom`` dataset (squares and discs, as the tests), then runs
``python -m torch.distributed.run --nproc-per-node N -m vitadapter train`` with the tiny
reference config (``--init`` its checkpoint) for each ``--runs`` entry ``PROCSxTHREADS``
(``OMP_NUM_THREADS`` per process). ``PROCSxTHREADSi`` runs PROCS independent single-process
trainings at the same time instead (no communication; their images/s summed): against the
DDP row it separates the cost of sharing the cores from the cost of the all-reduces.
``--batch-size`` is per process (weak scaling, as DDP is used: N processes see N times the
images per iteration). Images/s is the mean of
``images_per_s`` in ``log.jsonl`` over the iterations after the first. The load average is
printed with each row (shared machines).

``--compile`` adds an in-process comparison, one process and one thread: the Trainer's step
eager, then with the backbone and the decode head under ``torch.compile`` (benchmark only; the
trainer does not compile). Its first iteration (compilation) is reported separately.

    python benchmarks/train_scaling.py [--runs 1x1 2x1 2x1i] [--iters 5] [--batch-size 2]
                                       [--crop 64] [--num-points 12544] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/data/reference/tiny-upstream/config.json"
CHECKPOINT = ROOT / "tests/data/reference/checkpoint.pth"


def write_dataset(root: Path, count: int, size: int) -> None:
    """The tests' synthetic custom dataset (tests/test_training_data.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_training_data import write_custom

    write_custom(root, count=count, size=(size, size))


def train_args(args: argparse.Namespace, data: Path, work: Path) -> list[str]:
    return ["--config", str(TINY), "--init", str(CHECKPOINT), "--data-root", str(data),
            "--dataset", "custom", "--work-dir", str(work), "--iters", str(args.iters),
            "--batch-size", str(args.batch_size), "--crop", str(args.crop),
            "--img-scale", str(args.crop), str(args.crop), "--num-points", str(args.num_points),
            "--warmup-iters", "0", "--eval-interval", "0", "--save-interval", "100000",
            "--log-interval", "1", "--num-workers", "0", "--device", "cpu"]


def steady(records: list[dict]) -> tuple[float, float, float]:
    """(first iteration s, mean s/iter after it, mean images/s after it)."""
    after = records[1:]
    return (records[0]["s_per_iter"], statistics.mean(r["s_per_iter"] for r in after),
            statistics.mean(r["images_per_s"] for r in after))


def run_torchrun(args: argparse.Namespace, data: Path, work: Path, run: str) -> dict:
    """One ``--runs`` entry: ``PxT`` (torchrun, P processes) or ``PxTi`` (P independent)."""
    independent = run.endswith("i")
    procs, threads = (int(v) for v in run.removesuffix("i").split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    launches = [(1, work / f"solo{i}") for i in range(procs)] if independent else [(procs, work)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    running = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(n), "-m", "vitadapter", "train", *train_args(args, data, folder)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n, folder in launches]
    for proc in running:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"training failed ({run}):\n{err.decode()[-3000:]}")
    wall = time.perf_counter() - start
    results = []
    for _, folder in launches:
        records = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]
        results.append(steady([r for r in records if "images_per_s" in r]))
    label = f"{procs} x {threads}" + (" independent" if independent else "")
    row = {"run": label, "procs": procs, "first_s": max(r[0] for r in results),
           "s_per_iter": statistics.mean(r[1] for r in results),
           "images_per_s": sum(r[2] for r in results), "wall_s": wall,
           "load": (load + os.getloadavg()[0]) / 2}
    print(row, file=sys.stderr, flush=True)
    return row


def compile_case(args: argparse.Namespace, data: Path, work: Path) -> list[dict]:
    """Eager against torch.compile of the backbone and head, in this process, one thread."""
    import torch

    from vitadapter.training.trainer import Trainer, TrainSettings

    torch.set_num_threads(1)
    rows = []
    for mode in ("eager", "compiled"):
        settings = TrainSettings(data, "custom", work / mode, model=str(TINY),
                                 init=str(CHECKPOINT), iters=args.iters,
                                 batch_size=args.batch_size, crop=args.crop,
                                 img_scale=(args.crop, args.crop), num_points=args.num_points,
                                 warmup_iters=0, eval_interval=0, save_interval=100000,
                                 log_interval=1, num_workers=0, device="cpu")
        trainer = Trainer(settings)
        if mode == "compiled":
            for name in ("backbone", "decode_head"):
                trainer.model.get_submodule(name).compile()
        load = os.getloadavg()[0]
        trainer.run()
        records = [json.loads(x) for x in (work / mode / "log.jsonl").read_text().splitlines()]
        first, s_iter, rate = steady([r for r in records if "images_per_s" in r])
        rows.append({"mode": mode, "first_s": first, "s_per_iter": s_iter,
                     "images_per_s": rate, "load": (load + os.getloadavg()[0]) / 2})
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["1x1", "2x1", "2x1i"],
                        metavar="PROCSxTHREADS[i]")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--num-points", type=int, default=12544)
    parser.add_argument("--images", type=int, default=8, help="synthetic training images")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.iters < 2:
        parser.error("--iters must be at least 2 (the first iteration is left out)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, args.images, args.crop)
        rows = [run_torchrun(args, data, Path(tmp) / f"run{i}", run)
                for i, run in enumerate(args.runs)]
        compiled = compile_case(args, data, Path(tmp) / "compile") if args.compile else []
    print(f"tiny model, crop {args.crop}, batch {args.batch_size} per process, "
          f"{args.num_points} points, {args.iters} iterations (first left out), gloo on CPU")
    print("| processes x threads | first iteration s | s / iter | images / s | load average |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['first_s']:.2f} | {r['s_per_iter']:.2f} | "
              f"{r['images_per_s']:.2f} | {r['load']:.1f} |")
    base = next((r for r in rows if r["run"] == "1 x 1"), None)
    for r in rows:
        if base is not None and r is not base:
            print(f"{r['run']}: {r['images_per_s'] / base['images_per_s']:.2f}x the images/s "
                  "of 1 process x 1 thread (same run)")
    if compiled:
        print("\n| step (1 process, 1 thread) | first iteration s | s / iter | images / s "
              "| load average |")
        print("|---|---|---|---|---|")
        for r in compiled:
            print(f"| {r['mode']} | {r['first_s']:.2f} | {r['s_per_iter']:.2f} | "
                  f"{r['images_per_s']:.2f} | {r['load']:.1f} |")
        print(f"compiled: {compiled[1]['images_per_s'] / compiled[0]['images_per_s']:.2f}x "
              "the eager images/s (same run)")


if __name__ == "__main__":
    main()

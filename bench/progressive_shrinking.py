"""Does progressive shrinking help? A same-budget A/B of supernet training (issue 20, item 2).

Each arm trains the same supernet job (`nas.supernet.trainer.train_loop`, in this process, one
torch thread) for the same epochs and steps from the same seed, differing only in
`SupernetTrainConfig.shrink`; then scores, with inherited weights and BN statistics recalibrated
on the same training batches (`inherited_accuracy`), the largest, the smallest and a fixed set of
random covered sub-networks (drawn once from `--subnet-seed`, the same for every arm and seed) on
validation. Reported per arm: the three accuracies (mean over seeds), and Kendall tau of the
random sub-networks' accuracies between arms (same seed) and between seeds (same arm: how far a
supernet's ranking is reproducible at all at this budget).

Resumable: checkpoints go to `--work` (a training resumes from its last epoch), every scored
sub-network is appended as one row to OUT/results.csv and skipped when there, and the report is
rebuilt from the rows.

    python -m bench.progressive_shrinking --seeds 0 1 --arms off ofa family-first
    python -m bench.progressive_shrinking --report
    python -m bench.progressive_shrinking --smoke --out /tmp/shrink-smoke --work /tmp/shrink-w
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from nas.supernet.config import SupernetConfig
from nas.supernet.shrink import SCHEDULES
from nas.supernet.trainer import (
    SupernetJob,
    SupernetTarget,
    SupernetTrainConfig,
    calibration_batches,
    inherited_accuracy,
    job_data,
    load_supernet,
    read_manifest,
    train_loop,
)
from search_spaces.spec import ArchSpec
from trials.data import describe

FIELDS = ("arm", "seed", "data", "image_size", "train_fraction", "epochs", "max_batches",
          "batch_size", "n_random", "calib_batches", "kind", "index", "tag", "val_top1",
          "train_seconds")


def job_of(args: argparse.Namespace, arm: str, seed: int) -> SupernetJob:
    target = SupernetTarget("resnest", "small", args.data, args.image_size, args.train_fraction)
    shape = describe(args.data, args.image_size)
    config = SupernetConfig(num_classes=shape.num_classes, in_channels=shape.in_channels)
    train = SupernetTrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                max_batches=args.max_batches, calib_batches=args.calib_batches,
                                n_random=args.n_random, seed=seed, shrink=arm)
    return SupernetJob(target, config, train)


def subnets(config: SupernetConfig, count: int, seed: int) -> list[tuple[str, ArchSpec]]:
    """The scored sub-networks: the largest, the smallest and `count` random covered ones."""
    rng = np.random.default_rng(seed)
    return [("largest", config.largest()), ("smallest", config.smallest()),
            *(("random", config.sample(rng)) for _ in range(count))]


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_arm(args: argparse.Namespace, arm: str, seed: int) -> None:
    job = job_of(args, arm, seed)
    work = Path(args.work) / f"{arm}-s{seed}"
    results = Path(args.out) / "results.csv"
    setting = {"arm": arm, "seed": seed, "data": args.data, "image_size": args.image_size,
               "train_fraction": args.train_fraction, "epochs": args.epochs,
               "max_batches": args.max_batches, "batch_size": args.batch_size,
               "n_random": args.n_random, "calib_batches": args.calib_batches}
    done = {r["index"] for r in read_rows(results)
            if all(r[k] == str(v) for k, v in setting.items())}
    specs = subnets(job.supernet, args.subnets, args.subnet_seed)
    if len(done) >= len(specs):
        return
    print(f"{arm} seed {seed}: training {args.epochs} epochs of {args.max_batches} steps",
          flush=True)
    train_loop({"job": job.to_dict(), "out": str(work)},
               report=lambda r: print(f"  epoch {r['epoch']}: largest "
                                      f"{r['val_top1_largest']:.3f} smallest "
                                      f"{r['val_top1_smallest']:.3f} "
                                      f"{r.get('shrink_phase', '')} "
                                      f"{r['epoch_seconds']:.0f}s", flush=True))
    seconds = read_manifest(work).seconds
    supernet, _ = load_supernet(work)
    data = job_data(job)
    calibration = calibration_batches(data, job.train.batch_size, job.train.calib_batches)
    for index, (kind, spec) in enumerate(specs):
        if str(index) in done:
            continue
        accuracy = inherited_accuracy(supernet, spec, calibration, data,
                                      job.train.eval_batch_size)
        append_row(results, {**setting, "kind": kind, "index": index, "tag": spec.tag,
                             "val_top1": f"{accuracy:.4f}", "train_seconds": f"{seconds:.1f}"})
    print(f"  scored {len(specs)} sub-networks", flush=True)


def report(out: Path) -> str:
    """The table the docs quote, from OUT/results.csv."""
    rows = read_rows(out / "results.csv")
    groups: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        groups.setdefault((r["arm"], int(r["seed"])), {})[int(r["index"])] = float(r["val_top1"])
    arms = [a for a in SCHEDULES if any(k[0] == a for k in groups)]
    seeds = sorted({k[1] for k in groups})
    complete = {k: v for k, v in groups.items() if len(v) == max(map(len, groups.values()))}
    lines = ["arm            seeds  largest  smallest  random mean  random min-max  train s",
             "-------------  -----  -------  --------  -----------  --------------  -------"]
    seconds = {(r["arm"], int(r["seed"])): float(r["train_seconds"]) for r in rows}
    for arm in arms:
        runs = [complete[(arm, s)] for s in seeds if (arm, s) in complete]
        if not runs:
            continue
        rand = [np.mean([v for i, v in run.items() if i >= 2]) for run in runs]
        lows = [min(v for i, v in run.items() if i >= 2) for run in runs]
        highs = [max(v for i, v in run.items() if i >= 2) for run in runs]
        secs = [seconds[(arm, s)] for s in seeds if (arm, s) in complete]
        lines.append(f"{arm:<13}  {len(runs):>5}  {_mean(r[0] for r in runs):>7}  "
                     f"{_mean(r[1] for r in runs):>8}  {_mean(rand):>11}  "
                     f"{np.mean(lows):.3f}-{np.mean(highs):.3f}     {np.mean(secs):>7.0f}")
    lines.append("")
    lines.append("Kendall tau of the random sub-networks' accuracies (tau-b):")
    for a, b in itertools.combinations(arms, 2):
        taus = [_tau(complete[(a, s)], complete[(b, s)]) for s in seeds
                if (a, s) in complete and (b, s) in complete]
        if taus:
            lines.append(f"  {a} vs {b}, same seed: " + ", ".join(f"{t:.3f}" for t in taus))
    for arm in arms:
        taus = [_tau(complete[(arm, s)], complete[(arm, t)])
                for s, t in itertools.combinations(seeds, 2)
                if (arm, s) in complete and (arm, t) in complete]
        if taus:
            lines.append(f"  {arm}, seed vs seed: " + ", ".join(f"{t:.3f}" for t in taus))
    return "\n".join(lines)


def _mean(values: Any) -> str:
    return f"{np.mean(list(values)):.3f}"


def _tau(a: dict[int, float], b: dict[int, float]) -> float:
    keys = sorted(i for i in a if i >= 2 and i in b)
    return float(kendalltau([a[i] for i in keys], [b[i] for i in keys]).statistic)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.progressive_shrinking",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--data", default="fashion-mnist-subset")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--train-fraction", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-random", type=int, default=2)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--subnets", type=int, default=30, help="random sub-networks scored")
    p.add_argument("--subnet-seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/raw/supernet-shrink")
    p.add_argument("--work", default="runs/supernet-shrink", help="checkpoint directories")
    p.add_argument("--report", action="store_true", help="only print the report")
    p.add_argument("--smoke", action="store_true", help="2 epochs of 3 steps, 8 px, digits")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.data, args.image_size, args.train_fraction = "digits", 8, 1.0
        args.epochs, args.max_batches, args.batch_size, args.subnets = 2, 3, 16, 4
        args.calib_batches = 1
    out = Path(args.out)
    if not args.report:
        torch.set_num_threads(args.threads)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        for seed in args.seeds:
            for arm in args.arms:
                run_arm(args, arm, seed)
        print(f"all runs done in {time.perf_counter() - start:.0f}s")
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["job_of", "main", "report", "subnets"]

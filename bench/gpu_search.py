"""Trials sharing one GPU inside a real search: Ray Tune with `--gpus-per-trial 1/k`.

`bench.gpu_trials` starts the trial processes itself, so it runs where Ray cannot be
installed. This script runs the real thing: `python -m nas.search` on Ray Tune with
`--gpus-per-trial 1/k --concurrency k` for each k, with the random sampler (seeded, so every k
trains the same specs in the same order), no pruning and no anchor. While each search runs, NVML
is sampled every 50 ms: GPU utilisation, and how many processes hold a CUDA context on the GPU,
which shows whether Ray really put k trials on it at once. Per trial: the trainer's own images/s
(training loop only), median over epochs >= 2. Each spec is also trained alone, outside Ray, by
`bench.gpu_trials`' trial process with the same threads, batch and image size: the search's
images/s per trial against the same model trained standalone. Small networks on a GPU are bound
by the host's kernel launches, so their images/s move between back-to-back processes; `--rounds`
repeats everything, with the standalone runs after the searches in odd rounds and before them in
even ones, and the tables show medians.

    python -m bench.gpu_search --concurrency 1 4 --trials 4 --epochs 6 --rounds 3   # CUDA + Ray
    python -m bench.gpu_search --cpu --concurrency 1 2 --trials 2 --epochs 2 --cpus-per-trial 1
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch

from bench.gpu_trials import Pool, Utilisation, steady, trial_config, write_raw
from bench.search_throughput import read_trials
from nas.experiment import ExperimentDir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4], help="trials per GPU")
    p.add_argument("--trials", type=int, default=8, help="per search")
    p.add_argument("--epochs", type=int, default=4, help="per trial; epoch 1 is not counted")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--cpus-per-trial", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1,
                   help="repetitions; the standalone runs alternate after and before the searches")
    p.add_argument("--cpu", action="store_true",
                   help="smoke mode: --gpus-per-trial 0, trials and the standalone runs on the CPU")
    p.add_argument("--no-standalone", action="store_true", help="skip the standalone runs")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-search"))
    return p.parse_args(argv)


def search(args: argparse.Namespace, k: int, gpu: Utilisation, round_: int) -> dict[str, Any]:
    """One real search with k trials per GPU: its trials' specs and curves, wall time and NVML."""
    name = f"k{k}-r{round_ + 1}"
    shutil.rmtree(args.out / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "nas.search", "--space", "resnest", "--out", str(args.out),
           "--name", name, "--trials", str(args.trials), "--epochs", str(args.epochs),
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--seed", str(args.seed), "--sampler", "random", "--pruner", "none", "--no-anchor",
           "--concurrency", str(k), "--cpus-per-trial", str(args.cpus_per_trial),
           "--gpus-per-trial", "0" if args.cpu else f"{1 / k:g}", "--time-budget", "60m"]
    print("$ " + " ".join(cmd), flush=True)
    gpu.start()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    util = gpu.stop()
    with ExperimentDir(args.out / name).trials_csv.open() as handle:
        table = {row["trial_id"]: row for row in csv.DictReader(handle)}
    trials = read_trials(args.out / name)
    for trial_id, trial in trials.items():
        trial.update(spec=str(trial["spec"]), tag=table[trial_id]["tag"],
                     macs=float(table[trial_id]["macs"]))
    return {"k": k, "round": round_ + 1, "wall_s": wall, "util": util, "busy_util": gpu.busy_mean(),
            "max_processes": max(gpu.processes, default=None), "trials": trials}


def standalone(args: argparse.Namespace, specs: dict[str, str]) -> dict[str, list[float]]:
    """Each spec trained alone in one persistent trial process (no Ray): key -> images/s."""
    device = "cpu" if args.cpu else "cuda"
    ns = argparse.Namespace(device=device, epochs=args.epochs, batch_size=args.batch_size,
                            image_size=args.image_size)
    pool = Pool(1, args.cpus_per_trial)
    try:
        out = {}
        for key, path in specs.items():
            results, _ = pool.run([trial_config(ns, path, args.seed, not args.cpu)], Utilisation())
            out[key] = results[0]["images_per_s"]
        return out
    finally:
        pool.close()


def report(args: argparse.Namespace, runs: list[dict[str, Any]],
           alone_rounds: list[dict[str, list[float]]]) -> None:
    """Print the tables: per k and per spec, medians over rounds of each trial's steady rate."""
    alone = {key: statistics.median(steady(r[key]) for r in alone_rounds)
             for key in (alone_rounds[0] if alone_rounds else {})}
    by_k = {k: [run for run in runs if run["k"] == k] for k in args.concurrency}
    rate = {k: {key: statistics.median(steady(t["images_per_s"]) for run in rs
                                       for t in run["trials"].values() if t["hash"] == key)
                for key in {t["hash"] for run in rs for t in run["trials"].values()}}
            for k, rs in by_k.items()}
    print(f"\nMedians over {args.rounds} round(s).\n| trials per GPU | search wall s | processes "
          "on the GPU at once (max) | GPU utilisation, whole search / while a trial process held "
          "the GPU | images/s per trial (median) | vs 1 per GPU | vs standalone |\n"
          "|---|---|---|---|---|---|---|")
    base = None
    for k, rs in by_k.items():
        median = statistics.median(rate[k].values())
        base = base or median
        vs_alone = [v / alone[key] for key, v in rate[k].items() if key in alone]
        utils = [r for r in rs if r["util"] is not None]
        util = "n/a" if not utils else (f"{statistics.median(r['util'] for r in utils):.0f}% / "
                                        f"{statistics.median(r['busy_util'] for r in utils):.0f}%")
        print(f"| {k} | {statistics.median(r['wall_s'] for r in rs):.0f} | "
              f"{max((r['max_processes'] or 0) for r in rs) or 'n/a'} | {util} | {median:,.0f} | "
              f"{median / base:.2f}x | "
              f"{statistics.geometric_mean(vs_alone) if vs_alone else float('nan'):.2f} |")
    print("\n| trial | MMACs | standalone images/s | " + " | ".join(f"k={k}" for k in by_k)
          + " |\n|---|---|---|" + "---|" * len(by_k))
    for trial_id, t in runs[0]["trials"].items():
        cells = [f"{rate[k][t['hash']]:,.0f}" if t["hash"] in rate[k] else "-" for k in by_k]
        alone_rate = f"{alone[t['hash']]:,.0f}" if t["hash"] in alone else "-"
        print(f"| {trial_id} {t['tag']} | {t['macs'] / 1e6:.1f} | {alone_rate} | "
              + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [*args.concurrency, args.trials, args.cpus_per_trial, args.rounds]
    if min(counts) < 1 or args.epochs < 2:
        print("error: --concurrency, --trials, --cpus-per-trial and --rounds must be >= 1 and "
              "--epochs >= 2", file=sys.stderr)
        return 2
    if not args.cpu and not torch.cuda.is_available():
        print("error: CUDA is not available (use --cpu for the smoke mode)", file=sys.stderr)
        return 2
    name = platform.processor() if args.cpu else torch.cuda.get_device_name(0)
    print(f"- {datetime.date.today().isoformat()}, {name}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, Ray {ray.__version__}, python {platform.python_version()}, "
          f"{args.cpus_per_trial} CPUs per trial, batch {args.batch_size}, {args.image_size} px "
          f"digits, {args.epochs} epochs, {args.trials} trials per search", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = Utilisation()
    runs: list[dict[str, Any]] = []
    alone_rounds: list[dict[str, list[float]]] = []
    specs: dict[str, str] = {}
    for r in range(args.rounds):  # standalone after the searches, then before them, and so on
        if r % 2 == 1 and not args.no_standalone:
            alone_rounds.append(standalone(args, specs))
        runs.extend(search(args, k, gpu, r) for k in args.concurrency)
        specs = specs or {t["hash"]: t["spec"] for t in runs[0]["trials"].values()}
        if r % 2 == 0 and not args.no_standalone:
            alone_rounds.append(standalone(args, specs))
        # After every round, so that a run cut short by a time limit keeps what it measured.
        write_raw(args.out / "gpu_search.json", args, runs=runs, standalone=alone_rounds)
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    report(args, runs, alone_rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

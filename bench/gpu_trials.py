"""Trials sharing one GPU: per-trial training images/s and GPU utilisation at 1, 2, 4 trials.

How many small candidates should share a GPU? A search with `--gpus-per-trial 1/k` has Ray
start k trial processes on one GPU; Ray only sets `CUDA_VISIBLE_DEVICES`, each process then runs
`trials.trial.Trial` like any other. This script does exactly that without Ray (so it runs where
Ray is not installed): a pool of persistent worker processes, each with its own CUDA context and
`--threads` torch threads; for each candidate and each k, k workers build the same trial
(different training seeds), report ready, and start together. Images/s per trial is the
trainer's own `images_per_s` (training loop only), median over epochs >= 2 (the first includes
kernel selection). Aggregate = sum over the k trials. GPU utilisation is NVML's "a kernel was
running" share, sampled every 50 ms while the trials train, and the mean is reported (n/a
without NVML).

`--formats` adds the memory-format comparison: the same candidates at k = 1, channels_last
against NCHW (both bf16 autocast), alternating the order each repeat.

    python -m bench.gpu_trials --device cuda --epochs 10 --formats 3
    python -m bench.gpu_trials --device cpu --candidates resnest:5 --concurrency 1 2 --epochs 2

NVML readings need `nvidia-ml-py` (the `pynvml` module); without it utilisation reads n/a.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import platform
import queue
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from search_spaces.cli import run_cli
from search_spaces.errors import UserError
from trials.trial import Trial
from trials.trial_config import build_trial_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--candidates", nargs="+", default=["resnest:5", "resnest:4", "resnest:0"],
                   help="specs (named point or SPACE:SEED); the defaults are 4, 16, 53 MMACs "
                        "at 16 px")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--epochs", type=int, default=8, help="per trial; epoch 1 is not counted")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per trial process")
    p.add_argument("--formats", type=int, default=0, metavar="REPEATS",
                   help="also compare channels_last with NCHW at k=1, this many repeats each")
    p.add_argument("--output", type=Path, help="write the raw results here as JSON")
    return p.parse_args(argv)


def worker(index: int, tasks: Any, results: Any, go: Any, threads: int) -> None:
    """One trial process: build the trial, report ready, wait for the start, train, report."""
    torch.set_num_threads(threads)
    while (task := tasks.get()) is not None:
        trial = Trial(build_trial_config(task["config"]), threads=threads)
        if trial.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trial.device)
        results.put(("ready", index))
        go.get()
        start = time.perf_counter()
        curve = [record["images_per_s"] for record in trial.run()]
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(trial.device) if trial.device.type == "cuda" else 0
        results.put(("done", index, {"images_per_s": curve, "wall_s": wall, "peak_bytes": peak,
                                     "macs": trial.costs.get("macs"), "tag": trial.spec.tag,
                                     "val_top1": trial.trainer.curve[-1]["val_top1"]}))
        del trial
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Utilisation:
    """Samples NVML's GPU utilisation, and how many processes hold a CUDA context on the GPU, on
    a thread between start() and stop()."""

    def __init__(self) -> None:
        try:  # lazy: NVML is optional, and only GPU runs can use it
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML (CPU machine, or the package is missing)
            self._nvml = None
        self.samples: list[int] = []
        self.processes: list[int] = []
        self._stop = threading.Event()

    def start(self) -> None:
        self.samples, self.processes, self._stop = [], [], threading.Event()
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            try:
                count = len(self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle))
            except self._nvml.NVMLError:
                count = -1
            self.processes.append(count)

    def stop(self) -> float | None:
        self._stop.set()
        if self._nvml is None:
            return None
        self._thread.join()
        return statistics.mean(self.samples) if self.samples else None

    def busy_mean(self) -> float | None:
        """Mean utilisation over the samples taken while some process held the GPU."""
        busy = [u for u, n in zip(self.samples, self.processes, strict=False) if n > 0]
        return statistics.mean(busy) if busy else None


class Pool:
    """Persistent trial processes (spawned: each gets its own CUDA context, as Ray's do)."""

    def __init__(self, size: int, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(size)]
        self.go = [ctx.Queue() for _ in range(size)]
        self.procs = [ctx.Process(target=worker, args=(i, self.tasks[i], self.results, self.go[i],
                                                       threads), daemon=True)
                      for i in range(size)]
        for proc in self.procs:
            proc.start()

    def run(self, configs: list[dict[str, Any]],
            gpu: Utilisation) -> tuple[list[dict], float | None]:
        """Train the configs together (one per worker); their results and mean utilisation."""
        for i, config in enumerate(configs):
            self.tasks[i].put({"config": config})
        for _ in configs:
            self._get("ready")
        gpu.start()
        for i in range(len(configs)):
            self.go[i].put(True)
        done = [self._get("done") for _ in configs]
        return [d[2] for d in sorted(done, key=lambda d: d[1])], gpu.stop()

    def _get(self, kind: str) -> tuple:
        while True:
            try:
                message = self.results.get(timeout=5)
            except queue.Empty:  # check that no worker died
                if dead := [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]:
                    raise SystemExit(f"a trial process died (exit codes {dead})") from None
                continue
            if message[0] != kind:
                raise RuntimeError(f"expected {kind}, got {message[0]}")
            return message

    def close(self) -> None:
        for tasks in self.tasks:
            tasks.put(None)
        for proc in self.procs:
            proc.join(timeout=30)


def write_raw(path: Path, args: argparse.Namespace, **data: Any) -> None:
    """A benchmark's raw results as JSON, with the arguments that produced them."""
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **data},
                               indent=1))


def steady(curve: list[float]) -> float:
    """Median images/s over epochs >= 2 (epoch 1 alone if that is all there is)."""
    return statistics.median(curve[1:] or curve)


def trial_config(args: argparse.Namespace, spec: str, seed: int, channels_last: bool) -> dict:
    return {"spec": spec, "device": args.device, "epochs": args.epochs, "seed": seed,
            "batch_size": args.batch_size, "image_size": args.image_size,
            "amp": args.device == "cuda", "channels_last": channels_last}


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Bad input: one line here, not a traceback from inside a trial process.
    if min(args.concurrency) < 1 or args.formats < 0:
        raise UserError("--concurrency values must be >= 1 and --formats >= 0")
    for spec in args.candidates:
        build_trial_config(trial_config(args, spec, 0, False))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
    print(f"- {datetime.date.today().isoformat()}, {name}, torch {torch.__version__}, python "
          f"{platform.python_version()}, {args.threads} threads per trial, batch "
          f"{args.batch_size}, {args.image_size} px digits, {args.epochs} epochs, bf16 autocast "
          f"{args.device == 'cuda'}", flush=True)
    gpu = Utilisation()
    pool = Pool(max(args.concurrency), args.threads)
    raw: dict[str, Any] = {"concurrency": [], "formats": []}
    try:
        print("\n| candidate | MMACs | trials per GPU | images/s per trial (median) "
              f"| aggregate images/s | vs {args.concurrency[0]} trial(s) | GPU utilisation "
              "| peak MiB per trial |\n" + "|---" * 8 + "|", flush=True)
        for spec in args.candidates:
            base = None
            for k in args.concurrency:
                configs = [trial_config(args, spec, seed, args.device == "cuda")
                           for seed in range(k)]
                results, util = pool.run(configs, gpu)
                per_trial = [steady(r["images_per_s"]) for r in results]
                total = sum(per_trial)
                base = base or total
                raw["concurrency"].append({"spec": spec, "k": k, "results": results, "util": util})
                print(f"| {spec} ({results[0]['tag']}) | {results[0]['macs'] / 1e6:.1f} | {k} | "
                      f"{statistics.median(per_trial):,.0f} | {total:,.0f} | {total / base:.2f}x | "
                      f"{'n/a' if util is None else f'{util:.0f}%'} | "
                      f"{max(r['peak_bytes'] for r in results) / 2**20:.0f} |", flush=True)
        if args.formats:
            print("\n| candidate | channels_last images/s | NCHW images/s "
                  "| ratio channels_last/NCHW | per-repeat ratios |\n|---|---|---|---|---|",
                  flush=True)
        for spec in args.candidates if args.formats else []:
            rates: dict[bool, list[float]] = {True: [], False: []}
            for repeat in range(args.formats):
                for fmt in ((True, False) if repeat % 2 == 0 else (False, True)):
                    results, _ = pool.run([trial_config(args, spec, 0, fmt)], gpu)
                    rates[fmt].append(steady(results[0]["images_per_s"]))
            ratios = [a / b for a, b in zip(rates[True], rates[False], strict=True)]
            raw["formats"].append({"spec": spec, "channels_last": rates[True],
                                   "nchw": rates[False]})
            print(f"| {spec} | {statistics.median(rates[True]):,.0f} | "
                  f"{statistics.median(rates[False]):,.0f} | "
                  f"{statistics.median(rates[True]) / statistics.median(rates[False]):.2f} | "
                  f"{', '.join(f'{r:.2f}' for r in ratios)} |", flush=True)
    finally:
        pool.close()
    if args.output:
        write_raw(args.output, args, **raw)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

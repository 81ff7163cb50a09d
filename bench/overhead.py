"""Framework overhead at scale: seconds per trial that are not training, and sampler ask/tell time.

The search's own cost per trial must stay small against training and must not grow faster than
the trial count (targets in docs/benchmarks.md), so this measures it on the real path with a
trainable that hardly trains.

(i) `search`: the real search path (the `nas.search` config and study, SearchController
    with real static costs, `trials.ray_runner.run_search` on Ray Tune, one trial at a time,
    2 epochs so the pareto pruner acts at its rung) with a trainable that does one tiny step
    per epoch, writes its checkpoint to the trial directory and reports, like the real one in
    a search (`--trainable real`: the real `run_trial` on 2% of digits at 8 px). Per trial:
    framework seconds = (search wall seconds - in-trial compute) / trials, in-trial compute
    being the trainable's own time outside `tune.report`. The controller's share (Optuna
    ask/tell, static costs, pruner, trials.csv, progress lines) is timed separately; the rest
    is Ray Tune.
(ii) `sampler`: Optuna ask (+ our space's `suggest`) and tell times against study size for
    `make_sampler("tpe")` and `make_sampler("nsga2")` with two objectives (accuracy, MACs), on
    in-memory storage and on the two storages `nas.experiment.open_storage` gives the search:
    Optuna's journal file (the default) and SQLite (`--storage sqlite:///...`).
(iii) `controller`: the controller alone (no Ray) over --trials' largest count for TPE and
    NSGA-II: thread CPU ms per trial of each step (ask, suggest, costs, tell, pruner, csv, front)
    in windows of trials, so growth shows independently of machine load.

    python -m bench.overhead                                   # all parts, 10/100/1000 trials
    python -m bench.overhead --part search --trials 10 100 1000 --sampler nsga2
    python -m bench.overhead --part sampler --sizes 10 100 1000 --repeats 5
    python -m bench.overhead --part controller --trials 1000
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import random
import shutil
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from ray import tune

from nas.experiment import ExperimentDir, open_storage, prepare_directory
from nas.search import cli as search
from nas.search import controller as search_controller
from nas.search.objectives import parse_objectives
from nas.search.strategy import make_sampler
from search_spaces import get_space
from trials import ray_runner
from trials.data import load_data
from trials.ray_runner import run_trial
from trials.run_dir import RunDir
from trials.training import save_checkpoint
from trials.trial_config import TrialConfig

TINY_FRACTION = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("search", "controller", "sampler", "all"), default="all")
    p.add_argument("--trials", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--trainable", choices=("tiny", "real"), default="tiny",
                   help="tiny: one 4->2 SGD step per epoch; real: run_trial on 2%% of digits")
    p.add_argument("--epochs", type=int, default=2, help="reports per trial (pruner rung at 1)")
    p.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 1000],
                   help="study sizes for the sampler part")
    p.add_argument("--storages", nargs="+",
                   default=["memory", "journal", "sqlite"], choices=("memory", "journal", "sqlite"),
                   help="journal: the search's default storage; sqlite: --storage sqlite:///...")
    p.add_argument("--profile", type=Path, default=None,
                   help="search part: write the driver's cProfile stats here (top 40 printed)")
    p.add_argument("--repeats", type=int, default=20, help="ask/tell pairs timed per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="tpe", help="search part: the search's --sampler")
    p.add_argument("--out", type=Path, default=Path("runs/bench-overhead"))
    return p.parse_args(argv)


# --- (i) search ---------------------------------------------------------------------------------


class _Clock:
    """A trainable's own time outside `tune.report`, logged (cumulative) at every report: Ray
    stops pruned trials inside a report, so a log written at the end would miss them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.log, self.key = config["_compute_log"], config["trial_dir"]
        self.start, self.in_report = time.perf_counter(), 0.0

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        compute = time.perf_counter() - self.start - self.in_report
        with open(self.log, "a") as handle:
            handle.write(json.dumps({"trial": self.key, "compute_s": compute}) + "\n")
        begin = time.perf_counter()
        tune.report(metrics, checkpoint=checkpoint)
        self.in_report += time.perf_counter() - begin


def tiny_trainable(config: dict[str, Any]) -> None:
    """One tiny SGD step per epoch (a 4->2 linear layer on 2 samples) and, like the real
    trainable in a search, a checkpoint written to the trial's directory and a report every
    epoch. Accuracy is made up (stable per trial), so the pruner still prunes."""
    clock = _Clock(config)
    epochs = TrialConfig.from_dict(config).epochs
    trial_dir = Path(config["trial_dir"])
    trial_dir.mkdir(parents=True, exist_ok=True)
    final = 0.3 + 0.7 * (zlib.crc32(config["trial_dir"].encode()) % 1000) / 1000
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(1, epochs + 1):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        metrics = {"epoch": epoch, "train_loss": float(loss), "val_top1": final * epoch / epochs,
                   "epoch_seconds": 0.0, "images_per_s": 0.0, "lr": 0.1}
        save_checkpoint({"model": model.state_dict()}, RunDir(trial_dir).checkpoint)
        clock.report(metrics)


def real_trainable(config: dict[str, Any]) -> None:
    """The real trial body (`run_trial`: Trial set-up, training, checkpoint, report per epoch)
    on 2% of the train split: one step per epoch plus the validation pass."""
    clock = _Clock(config)
    run_trial({**config, "train_fraction": TINY_FRACTION}, report=clock.report,
              get_checkpoint=tune.get_checkpoint)


TRAINABLES = {"tiny": tiny_trainable, "real": real_trainable}


def _timed(ctrl: Any, spent: dict[str, float], marks: list[tuple[float, ...]]) -> None:
    """Wrap the controller's driver-side methods: sum their wall time per method and their CPU
    time (outermost calls only), and at each trial's end append a mark (wall clock, driver
    process CPU, controller wall, controller CPU) for the growth windows."""
    depth = [0]
    for name in ("next_trial", "on_result", "on_complete"):
        original = getattr(ctrl, name)

        def wrapper(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            depth[0] += 1
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return _original(*args, **kw)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start
                    spent["cpu"] = spent.get("cpu", 0.0) + time.thread_time() - cpu
                    if _name == "on_complete":
                        marks.append((time.perf_counter(), time.process_time(),
                                      sum(v for k, v in spent.items() if k in METHODS),
                                      spent["cpu"]))

        setattr(ctrl, name, wrapper)


METHODS = ("next_trial", "on_result", "on_complete")


def search_overhead(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One search of `n` trials through the real driver path; framework seconds per trial."""
    out = args.out / "search"
    name = f"n{n}" if args.sampler == "tpe" else f"n{n}-{args.sampler}"
    shutil.rmtree(out / name, ignore_errors=True)
    cli = search.build_parser().parse_args([
        "--out", str(out), "--name", name, "--trials", str(n), "--epochs", str(args.epochs),
        "--image-size", "8", "--time-budget", "10h", "--concurrency", "1",
        "--seed", str(args.seed), "--sampler", args.sampler])
    config, runtime = search.config_from_args(cli)
    exp = prepare_directory(out, config.name, False)
    data = load_data(config.data, config.image_size, include_test=False)
    config = dataclasses.replace(config, image_size=data.image_size, num_classes=data.num_classes,
                                 in_channels=data.in_channels)
    space, objectives = get_space(config.space), parse_objectives(list(config.objectives))
    costs = search.cost_function(config)
    ray_runner.connect(None)
    exp.mkdir(parents=True)
    ExperimentDir(exp).config.write_text(config.to_json())
    study = search.open_study(config, exp, objectives, resume=False)
    ctrl = search.make_controller(config, exp, study, space, objectives, costs, False)
    ctrl.log = lambda line: None  # lines are still formatted (their cost counts), not printed
    compute_log = (exp / "compute.jsonl").resolve()
    make_config = ctrl.trial_config_fn
    ctrl.trial_config_fn = lambda *a: {**make_config(*a), "_compute_log": str(compute_log)}
    spent: dict[str, float] = {}
    marks: list[tuple[float, ...]] = []
    _timed(ctrl, spent, marks)
    cost_fn = ctrl.cost_fn

    def timed_costs(spec: Any) -> dict[str, float]:  # part of next_trial, reported on its own
        begin = time.perf_counter()
        try:
            return cost_fn(spec)
        finally:
            spent["of_which_costs"] = spent.get("of_which_costs", 0.0) + time.perf_counter() - begin

    ctrl.cost_fn = timed_costs
    start = time.perf_counter()
    marks.append((start, time.process_time(), 0.0, 0.0))
    profiler = None
    if args.profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
    ray_runner.run_search(ctrl, storage_path=exp, cpus_per_trial=1, gpus_per_trial=0,
                          concurrency=1, max_failures=0, time_budget_s=36000,
                          trainable=TRAINABLES[args.trainable])
    wall = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    per_trial: dict[str, float] = {}
    for line in compute_log.read_text().splitlines():
        row = json.loads(line)
        per_trial[row["trial"]] = row["compute_s"]
    compute, trained = sum(per_trial.values()), len(per_trial)
    return {
        "trials": n, "sampler": args.sampler, "trained": trained, "counts": ctrl.counts(),
        "wall_s": wall,
        "trainable": args.trainable, "compute_s": compute,
        "framework_s_per_trial": (wall - compute) / max(trained, 1),
        "controller_s_per_trial": sum(spent.get(k, 0.0) for k in METHODS) / max(trained, 1),
        "controller_cpu_s_per_trial": spent.get("cpu", 0.0) / max(trained, 1),
        "controller_s": spent, "compute_s_per_trial": compute / max(trained, 1),
        "windows": _windows(marks),
    }


def _windows(marks: list[tuple[float, ...]]) -> dict[str, dict[str, float]]:
    """Per-trial means over windows of finished trials (growth check): wall seconds, driver
    process CPU seconds, controller wall and CPU seconds."""
    out = {}
    for lo, hi in ((1, 10), (11, 100), (101, 500), (501, 1000), (1001, 10**6)):
        if len(marks) <= lo:
            continue
        a, b = marks[lo - 1], marks[min(hi, len(marks) - 1)]
        k = min(hi, len(marks) - 1) - lo + 1
        out[f"{lo}-{lo + k - 1}"] = {name: (b[i] - a[i]) / k for i, name in enumerate(
            ("wall_s", "driver_cpu_s", "controller_s", "controller_cpu_s"))}
    return out


def controller_growth(n: int, sampler: str, args: argparse.Namespace) -> dict[str, Any]:
    """The controller alone (no Ray; the study as the search opens it, real static costs,
    made-up 2-epoch results): thread CPU seconds per trial of each step, in windows of trials."""
    out = args.out / "controller"
    shutil.rmtree(out / f"{sampler}{n}", ignore_errors=True)
    cli = search.build_parser().parse_args([
        "--out", str(out), "--name", f"{sampler}{n}", "--trials", str(n), "--epochs", "2",
        "--image-size", "8", "--time-budget", "10h", "--sampler", sampler,
        "--seed", str(args.seed)])
    config, _ = search.config_from_args(cli)
    config = dataclasses.replace(config, image_size=8)
    exp = prepare_directory(out, config.name, False)
    exp.mkdir(parents=True)
    objectives = parse_objectives(list(config.objectives))
    study = search.open_study(config, exp, objectives, resume=False)
    ctrl = search.make_controller(config, exp, study, get_space(config.space), objectives,
                                  search.cost_function(config), False)
    ctrl.log = lambda line: None
    cpu: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                cpu[name] = cpu.get(name, 0.0) + time.thread_time() - start
        return wrapper

    ctrl.study.ask = timed("optuna ask", ctrl.study.ask)
    ctrl.space.suggest = timed("space.suggest (sampling)", ctrl.space.suggest)
    ctrl.cost_fn = timed("static costs", ctrl.cost_fn)
    ctrl.study.tell = timed("optuna tell", ctrl.study.tell)
    ctrl.study.pruner.prune = timed("pruner", ctrl.study.pruner.prune)
    ctrl.front = timed("front", ctrl.front)
    csv_writer = search_controller.write_trials_csv
    search_controller.write_trials_csv = timed("trials.csv", csv_writer)
    rng = random.Random(args.seed)
    marks = [(0, time.thread_time(), dict(cpu))]
    try:
        for i in range(1, n + 1):
            proposal = ctrl.next_trial()
            if proposal is None:
                break
            trial_id, _ = proposal
            final = rng.uniform(0.3, 1.0)
            result = {"epoch": 1, "val_top1": final / 2, "train_loss": 1.0}
            if not ctrl.on_result(trial_id, result):
                result = {"epoch": 2, "val_top1": final, "train_loss": 1.0}
            ctrl.on_complete(trial_id, result)
            if i in (10, 100, 500, 1000, n):
                marks.append((i, time.thread_time(), dict(cpu)))
    finally:
        search_controller.write_trials_csv = csv_writer
    windows = {}
    for (i0, t0, c0), (i1, t1, c1) in zip(marks, marks[1:], strict=False):
        if i1 > i0:
            per = {k: 1e3 * (v - c0.get(k, 0.0)) / (i1 - i0) for k, v in c1.items()}
            per["total (all controller calls)"] = 1e3 * (t1 - t0) / (i1 - i0)
            windows[f"{i0 + 1}-{i1}"] = per
    return {"sampler": sampler, "trials": n, "ms_per_trial_cpu": windows}


# --- (ii) sampler -------------------------------------------------------------------------------


def sampler_times(name: str, size: int, storage: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median ask (+ space.suggest) and tell ms with `size` finished trials already in the study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space("resnest")
    rng = np.random.default_rng(args.seed)
    url: Any = None
    if storage != "memory":  # a fresh experiment directory, opened as the search opens it
        exp = args.out / "sampler" / f"{storage}-{name}-{size}"
        shutil.rmtree(exp, ignore_errors=True)
        exp.mkdir(parents=True)
        database = f"sqlite:///{(exp / 'study.sqlite').resolve()}" if storage == "sqlite" else ""
        url = open_storage(exp, database, create=True)
    filled = optuna.create_study(directions=["maximize", "minimize"],
                                 sampler=optuna.samplers.RandomSampler(seed=args.seed))

    def one(study: optuna.Study) -> tuple[float, float]:
        start = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        asked = time.perf_counter()
        study.tell(trial, [float(rng.uniform(0.1, 1.0)), float(10 ** rng.uniform(5.7, 7.8))])
        return asked - start, time.perf_counter() - asked

    for _ in range(size):  # random trials, copied into the storage under test
        one(filled)
    study = optuna.create_study(directions=["maximize", "minimize"], storage=url)
    study.add_trials(filled.trials)
    study.sampler = make_sampler(name, seed=args.seed, n_trials=size)
    timings = [one(study) for _ in range(args.repeats)]
    return {"sampler": name, "storage": storage, "size": size,
            "ask_ms": 1e3 * statistics.median(t[0] for t in timings),
            "tell_ms": 1e3 * statistics.median(t[1] for t in timings)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    if args.part in ("sampler", "all"):
        results["sampler"] = []
        for storage in args.storages:
            for name in ("tpe", "nsga2"):
                for size in args.sizes:
                    row = sampler_times(name, size, storage, args)
                    results["sampler"].append(row)
                    print(json.dumps(row), flush=True)
    if args.part in ("controller", "all"):
        results["controller"] = []
        for name in ("tpe", "nsga2"):
            row = controller_growth(max(args.trials), name, args)
            results["controller"].append(row)
            print(json.dumps(row), flush=True)
    if args.part in ("search", "all"):
        results["search"] = []
        for n in args.trials:
            row = search_overhead(n, args)
            results["search"].append(row)
            print(json.dumps(row), flush=True)
    results["load_after"] = os.getloadavg()
    path = args.out / f"overhead-{args.part}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Framework overhead at scale: seconds per trial that are not training, and sampler ask/tell time.

(i) `search`: the real search path (`nas.search` config, study on SQLite, SearchController,
    `trials.ray_runner.run_search` on Ray Tune, one trial at a time) with a trainable that runs
    the real trial body (`trials.ray_runner.run_trial`: Trial set-up, checkpoint and report every
    epoch) on 2% of the digits train split (one step per epoch) at 8 px. Per trial:
    framework seconds = wall seconds of the search / trials - in-trial compute (the trainable's
    own time outside `tune.report`). The controller's share (Optuna ask/tell, static costs,
    pruner, trials.csv, progress) is timed separately; the rest is Ray Tune.
(ii) `sampler`: Optuna ask (+ our space's `suggest`) and tell times against study size for
    `make_sampler("tpe")` and `make_sampler("nsga2")` with two objectives (accuracy, MACs), on
    in-memory and SQLite storage.

    python bench/overhead.py                                   # both parts, 10/100/1000 trials
    python bench/overhead.py --part sampler --sizes 10 100 1000 --repeats 20
    python bench/overhead.py --part search --trials 10 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_FRACTION = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("search", "sampler", "all"), default="all")
    p.add_argument("--trials", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--epochs", type=int, default=2, help="reports per trial (pruner rung at 1)")
    p.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 1000],
                   help="study sizes for the sampler part")
    p.add_argument("--repeats", type=int, default=20, help="ask/tell pairs timed per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-overhead"))
    return p.parse_args(argv)


# --- (i) search ---------------------------------------------------------------------------------


def tiny_trainable(config: dict[str, Any]) -> None:
    """The real trial body on a tiny train subset; logs its own time outside `tune.report`."""
    from ray import tune

    from trials.ray_runner import run_trial

    log = config["_compute_log"]
    in_report = 0.0

    def report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        nonlocal in_report
        start = time.perf_counter()
        tune.report(metrics, checkpoint=checkpoint)
        in_report += time.perf_counter() - start

    start = time.perf_counter()
    run_trial({**config, "train_fraction": TINY_FRACTION}, report=report,
              get_checkpoint=tune.get_checkpoint)
    total = time.perf_counter() - start
    with open(log, "a") as handle:
        handle.write(json.dumps({"total_s": total, "report_s": in_report}) + "\n")


def _timed(ctrl: Any, spent: dict[str, float], ends: list[float]) -> None:
    """Wrap the controller's driver-side methods to sum their time (outermost calls only)."""
    depth = [0]
    for name in ("next_trial", "on_result", "on_complete"):
        original = getattr(ctrl, name)

        def wrapper(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            depth[0] += 1
            start = time.perf_counter()
            try:
                return _original(*args, **kw)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start
                if _name == "on_complete" and depth[0] == 0:
                    ends.append(time.perf_counter())

        setattr(ctrl, name, wrapper)


def search_overhead(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One search of `n` trials through the real driver path; framework seconds per trial."""
    from nas import search
    from nas.objectives import parse_objectives
    from search_spaces import get_space
    from trials import ray_runner
    from trials.data import load_data

    out = args.out / "search"
    shutil.rmtree(out / f"n{n}", ignore_errors=True)
    cli = search.build_parser().parse_args([
        "--out", str(out), "--name", f"n{n}", "--trials", str(n), "--epochs", str(args.epochs),
        "--image-size", "8", "--time-budget", "10h", "--concurrency", "1",
        "--seed", str(args.seed)])
    config, runtime = search.config_from_args(cli)
    exp = search.prepare_directory(out, config.name, False)
    data = load_data(config.data, config.image_size, include_test=False)
    config = dataclasses.replace(config, image_size=data.image_size, num_classes=data.num_classes,
                                 in_channels=data.in_channels)
    space, objectives = get_space(config.space), parse_objectives(list(config.objectives))
    costs = search.cost_function(config)
    ray_runner.connect(None)
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(config.to_json())
    study = search.open_study(config, exp, objectives, resume=False)
    ctrl = search.make_controller(config, exp, study, space, objectives, costs, False)
    ctrl.log = lambda line: None  # lines are still formatted (their cost counts), not printed
    compute_log = (exp / "compute.jsonl").resolve()
    make_config = ctrl.trial_config_fn
    ctrl.trial_config_fn = lambda *a: {**make_config(*a), "_compute_log": str(compute_log)}
    spent: dict[str, float] = {}
    ends: list[float] = []
    _timed(ctrl, spent, ends)
    start = time.perf_counter()
    ray_runner.run_search(ctrl, storage_path=exp, cpus_per_trial=1, gpus_per_trial=0,
                              concurrency=1, max_failures=0, time_budget_s=36000,
                              trainable=tiny_trainable)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in compute_log.read_text().splitlines()]
    compute = sum(r["total_s"] - r["report_s"] for r in rows)
    trained = len(rows)
    gaps = [b - a for a, b in zip([start, *ends], ends, strict=False)]
    return {
        "trials": n, "trained": trained, "counts": ctrl.counts(), "wall_s": wall,
        "compute_s": compute, "report_s": sum(r["report_s"] for r in rows),
        "framework_s_per_trial": (wall - compute) / max(trained, 1),
        "controller_s_per_trial": sum(spent.values()) / max(trained, 1),
        "controller_s": spent, "per_trial_wall_windows": _windows(gaps),
        "compute_s_per_trial": compute / max(trained, 1),
    }


def _windows(gaps: list[float]) -> dict[str, float]:
    """Mean wall seconds between trial completions in windows of trial numbers (growth check)."""
    out = {}
    for lo, hi in ((1, 10), (11, 100), (101, 1000), (1001, 10000)):
        part = gaps[lo - 1:hi]
        if part:
            out[f"{lo}-{min(hi, len(gaps))}"] = statistics.fmean(part)
    return out


# --- (ii) sampler -------------------------------------------------------------------------------


def sampler_times(name: str, size: int, storage: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median ask (+ space.suggest) and tell ms with `size` finished trials already in the study."""
    import numpy as np
    import optuna

    from nas.strategy import make_sampler
    from search_spaces import get_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space("resnest")
    rng = np.random.default_rng(args.seed)
    url = None
    if storage == "sqlite":
        db = args.out / "sampler" / f"{name}-{size}.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        db.unlink(missing_ok=True)
        url = f"sqlite:///{db.resolve()}"
    study = optuna.create_study(directions=["maximize", "minimize"], storage=url,
                                sampler=optuna.samplers.RandomSampler(seed=args.seed))

    def one() -> tuple[float, float]:
        start = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        asked = time.perf_counter()
        study.tell(trial, [float(rng.uniform(0.1, 1.0)), float(10 ** rng.uniform(5.7, 7.8))])
        return asked - start, time.perf_counter() - asked

    for _ in range(size):
        one()
    study.sampler = make_sampler(name, seed=args.seed, n_trials=size, constrained=False)
    timings = [one() for _ in range(args.repeats)]
    return {"sampler": name, "storage": storage, "size": size,
            "ask_ms": 1e3 * statistics.median(t[0] for t in timings),
            "tell_ms": 1e3 * statistics.median(t[1] for t in timings)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    if args.part in ("sampler", "all"):
        results["sampler"] = []
        for storage in ("memory", "sqlite"):
            for name in ("tpe", "nsga2"):
                for size in args.sizes:
                    row = sampler_times(name, size, storage, args)
                    results["sampler"].append(row)
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

"""Search efficiency at equal compute: hypervolume of (accuracy, MACs) against training MAC-epochs.

Does the default search find better (accuracy, MACs) fronts than the alternatives for the same
training compute? Each run is the quick start's search (`nas.search`'s own flags and defaults:
data, image size, train share, epochs, batch size, sampler seeding, pruner, anchor) with the
strategy's sampler and pruner, given a compute budget instead of a trial count:
    default   TPE (multi-objective) + `pareto` pruner (MO-ASHA), the family anchors first
    random    random sampler, no pruning (pure random search: no anchor)
    tpe_sha   TPE + `sha` (with two objectives: accuracy-only ASHA on the same rungs), anchored
`--anchor cheapest` (only the space's cheapest corner first, the default before 2026-12-07) and
`--no-anchor` give the ablations (keys suffixed `_cheapest` and `_noanchor`). Random search and the
hand-designed family are also read off ResNeSt-Bench without training (`bench.table_search`).

The supernet path (issue 20, item 5; `--strategies supernet --supernet DIR`) is the search with
`--estimator supernet --supernet DIR --finetune K`: `--estimated` proposals (TPE, the anchor as
above) scored with the inherited weights of DIR, a supernet `bench.supernet_ranking` trained (its
training MAC-epochs, counted exactly there, are the run's first compute), then the estimated
front's best K trained for the search's epochs from the inherited weights (or from scratch,
`--finetune-from scratch`) without pruning, each adding its MAC-epochs. The hypervolume is that
of the fine-tuned trials only (trained accuracies, never estimates). Scoring is forward-only and
not in the compute (nor is any search's validation); its seconds and images are recorded.

Each run drives the search's own controller (`nas.search.cli.make_controller`, the study as
`open_study` opens it, trials.csv) and trains every proposal for real with `trials.trial.Trial`,
serially in one process with one torch thread: counting compute (not seconds) makes the budget
independent of machine load. Every completed trial is also scored on the test split (not seen by
the search) so the fronts' members can be reported on it. Compute and hypervolume are defined in
`bench.front_quality`. A run writes OUT/KEY-sSEED.json when it ends; a rerun skips runs that have
one and starts unfinished ones afresh, so the bench resumes run by run.

    python -m bench.search_efficiency --jobs 2 --seeds 6 7 8 9 10 --out runs/evidence
    python -m bench.search_efficiency --jobs 2 --seeds 1 2 3 4 5 --no-anchor --out runs/evidence
    python -m bench.efficiency_report --out runs/evidence          # table, targets, plot
    python -m bench.search_efficiency --strategies supernet --finetune 4 --jobs 1 --seeds 1 2 3 \
        --supernet runs/supernet-ranking/epochs8 --out runs/supernet-evidence
    python -m bench.search_efficiency --smoke --seeds 0 --out /tmp/eff-smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.front_quality import macs_range, normalised_hypervolume
from bench.supernet_ranking import training_compute
from nas.search.anchor import ANCHORS
from nas.search.cli import (
    DEFAULTS,
    build_parser,
    config_from_args,
    cost_function,
    make_controller,
    open_study,
)
from nas.search.estimator import (
    SupernetScorer,
    covered_space,
    prepare_finetune,
    run_estimated,
    supernet_config_of,
)
from nas.search.objectives import parse_objectives
from nas.supernet.trainer import read_manifest
from search_spaces import get_space
from trials.data import describe
from trials.trial import Trial
from trials.trial_config import TrialConfig

STRATEGIES: dict[str, tuple[str, str]] = {  # name -> (sampler, pruner)
    "default": ("tpe", "pareto"),
    "random": ("random", "none"),
    "tpe_sha": ("tpe", "sha"),
    "supernet": ("tpe", "pareto"),  # estimator supernet; its fine-tuning is never pruned
}
# 0.5 G MAC-epochs: the anchor and 7-15 more trials of the default search at 16 px, 4 full-
# fidelity uniform samples of the small space (mean about 31 MMACs), or 57 trainings of its
# cheapest corner. (1 G was set first and cut to this before any run ended, for compute.)
DEFAULT_BUDGET = 0.5e9
# The compute budget ends a run, never the search's wall clock (a loaded machine is slower).
NO_CLOCK = "1000h"
# --smoke: the same code path on 8 px images and 5% of train, for the tests.
SMOKE_FLAGS = ("--image-size", "8", "--train-fraction", "0.05")


def run_key(run: dict[str, Any]) -> str:
    """Strategy name, suffixed `_noanchor` for a TPE run without anchors and `_cheapest` for one
    with only the cheapest corner (runs from before the family anchors stored true for it)."""
    key = run["strategy"]
    if key == "supernet":
        key += f"_k{run['finetune']}" + ("_scratch" if run["finetune_from"] == "scratch" else "")
    anchor = {True: "cheapest", False: "none"}.get(run.get("anchor"), run.get("anchor"))
    if run.get("sampler") == "random" or anchor == "families" or (
            run["strategy"] == "supernet" and anchor == "cheapest"):  # its runs all had that one
        return key
    return f"{key}_noanchor" if anchor == "none" else f"{key}_cheapest"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search_efficiency",
                                description=__doc__.split("\n")[0])
    p.add_argument("--strategies", nargs="+", default=["default"], choices=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                   help="search seeds (default 1-5: seed 0 chose the defaults; the family "
                        "anchors are reported on 6-10, see docs/benchmarks.md)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"training MAC-epochs per run (default {DEFAULT_BUDGET:.2g})")
    p.add_argument("--max-trials", type=int, default=400, help="cap on trials per run")
    p.add_argument("--anchor", choices=ANCHORS, default="families",
                   help="the anchors TPE strategies train first, as `nas.search --anchor` "
                        "(default families, the search's; random search never has any)")
    p.add_argument("--no-anchor", dest="anchor", action="store_const", const="none",
                   help="same as --anchor none")
    p.add_argument("--search-flags", default="",
                   help="more nas.search flags for every run, e.g. '--epochs 8' (default none)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    p.add_argument("--out", type=Path, default=Path("runs/evidence"))
    p.add_argument("--smoke", action="store_true", help="8 px, 5%% of train, for the tests")
    p.add_argument("--supernet", type=Path, default=None, metavar="DIR",
                   help="the supernet strategy's trained supernet (bench.supernet_ranking)")
    p.add_argument("--finetune", type=int, default=4, help="supernet: the estimated front's "
                   "best K trained per candidate (default 4)")
    p.add_argument("--finetune-from", default="inherited", choices=("inherited", "scratch"))
    p.add_argument("--estimated", type=int, default=DEFAULTS["trials"],
                   help="supernet: proposals scored with inherited weights (default: the "
                        "search's --trials)")
    args = p.parse_args(argv)
    if "supernet" in args.strategies and args.supernet is None:
        p.error("--strategies supernet needs --supernet DIR")
    return args


def search_flags(strategy: str, seed: int, args: argparse.Namespace, exp: Path) -> list[str]:
    """The `nas.search` command line that this run is (without `--trials`'s budget semantics)."""
    sampler, pruner = STRATEGIES[strategy]
    anchored = args.anchor if sampler != "random" else "none"
    trials = args.estimated if strategy == "supernet" else args.max_trials
    flags = ["--sampler", sampler, "--pruner", pruner, "--seed", str(seed),
             "--out", str(exp.parent), "--name", exp.name, "--trials", str(trials),
             "--time-budget", NO_CLOCK,
             "--anchor", anchored, *args.search_flags.split()]
    if strategy == "supernet":
        flags += ["--estimator", "supernet", "--supernet", str(args.supernet),
                  "--finetune", str(args.finetune), "--finetune-from", args.finetune_from]
    return flags + list(SMOKE_FLAGS) if args.smoke else flags


def run_one(strategy: str, seed: int, args: argparse.Namespace) -> Path:
    """One search run; writes OUT/KEY-sSEED.json and returns its path."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, pruner = STRATEGIES[strategy]
    anchored = args.anchor if sampler != "random" else "none"
    key = run_key({"strategy": strategy, "sampler": sampler, "anchor": anchored,
                   "finetune": args.finetune, "finetune_from": args.finetune_from})
    path = args.out / f"{key}-s{seed}.json"
    if path.exists():
        return path
    exp = args.out / f"{key}-s{seed}"
    shutil.rmtree(exp, ignore_errors=True)  # an unfinished run starts afresh
    exp.mkdir(parents=True)
    flags = search_flags(strategy, seed, args, exp)
    config, _ = config_from_args(build_parser().parse_args(flags))
    shape = describe(config.data, config.image_size or None)
    config = replace(config, image_size=shape.image_size, num_classes=shape.num_classes,
                     in_channels=shape.in_channels)
    objectives = parse_objectives(list(config.objectives))
    space = get_space(config.space, config.preset)
    if strategy == "supernet":  # the sampler proposes what the supernet covers
        space = covered_space(supernet_config_of(config), config.space)
    study = open_study(config, exp, objectives, resume=False)
    ctrl = make_controller(config, exp, study, space, objectives, cost_function(config),
                           resume=False)
    ctrl.log = lambda _: None
    low, high = macs_range(config.image_size, config.num_classes, config.in_channels)
    compute, epochs, started, train_s = 0.0, 0, time.perf_counter(), 0.0
    history: list[tuple[float, int, float]] = [(0.0, 0, 0.0)]
    test: dict[str, float] = {}
    supernet: dict[str, Any] = {}
    budget = args.budget
    if strategy == "supernet":
        supernet = estimate(ctrl, config, exp, args.supernet)
        compute, budget = supernet["train_mac_epochs"], float("inf")  # ends when K are trained
        history.append((compute, 0, 0.0))
    while compute < budget and (proposal := ctrl.next_trial()) is not None:
        trial_id, trial_cfg = proposal
        try:
            trial = Trial(TrialConfig.from_dict(trial_cfg), threads=1, include_test=True)
        except Exception as err:  # e.g. a spec the builder refuses: FAIL, no compute spent
            ctrl.on_complete(trial_id, None, error=f"{type(err).__name__}: {err}")
            continue
        last: dict[str, Any] | None = None
        for last in trial.run():
            compute += trial.costs["macs"]
            epochs += 1
            train_s += last["epoch_seconds"]
            if ctrl.on_result(trial_id, last):
                break
            if compute >= budget and not trial.done:
                ctrl.pruned[trial_id] = "stopped: compute budget spent"
                break
        if trial.done:
            test[trial_id] = float(trial.trainer.evaluate("test")["top1"])
        ctrl.on_complete(trial_id, last)
        front = [(r.accuracy, r.costs["macs"]) for r in ctrl.front("train")]
        history.append((compute, epochs, normalised_hypervolume(front, low, high)))
    if not supernet and compute < budget:  # the controller stopped proposing: say why
        raise RuntimeError(f"{key} seed {seed} ended at {compute:.3g} of {args.budget:.3g} "
                           f"MAC-epochs after {ctrl.launched} trials (--max-trials "
                           f"{args.max_trials}?)")
    result = {
        "strategy": strategy, "seed": seed, "sampler": sampler, "pruner": pruner,
        "anchor": anchored, "flags": flags, "budget": budget if supernet == {} else None,
        "compute": compute, "finetune": args.finetune, "finetune_from": args.finetune_from,
        "supernet": supernet or None,
        "epochs_spent": epochs, "history": history, "macs_range": [low, high],
        "image_size": config.image_size, "data": config.data,
        "train_fraction": config.train_fraction, "epochs": config.epochs,
        "reduction_factor": getattr(study.pruner, "reduction_factor", None),
        "first_rung": getattr(study.pruner, "min_resource", None),
        "wall_s": time.perf_counter() - started, "train_s": train_s, "counts": ctrl.counts(),
        "front": [_summary(r, test) for r in ctrl.front("train")],
        "trials": [_summary(r, test) for r in ctrl.records.values()],
    }
    path.write_text(json.dumps(result, indent=1))
    print(f"{key} seed {seed}: {compute / 1e9:.3f} G MAC-epochs, {epochs} epochs, "
          f"hv {history[-1][2]:.4f}, {result['counts']}, {result['wall_s']:.0f}s", flush=True)
    return path


def estimate(ctrl: Any, config: Any, exp: Path, directory: Path) -> dict[str, Any]:
    """The supernet path's estimator phase: score the proposals with the inherited weights of
    `directory`, then queue the estimated front's best K for fine-tuning (as `nas.search` does);
    what it spent."""
    manifest = read_manifest(directory)
    start = time.perf_counter()
    scorer = SupernetScorer(directory)
    run_estimated(ctrl, scorer)
    seconds = time.perf_counter() - start
    scored = sum(r.estimator == "supernet" for r in ctrl.records.values())
    per_spec = sum(len(x) for x in scorer.calibration) + len(scorer.data.val)
    estimated = ctrl.front("supernet")
    if not prepare_finetune(ctrl, config, exp, []):
        raise RuntimeError(f"nothing to fine-tune in {exp}")
    return {"dir": str(directory), "train_mac_epochs": training_compute(directory),
            "train_s": manifest.seconds, "job": manifest.job.to_dict(), "score_s": seconds,
            "scored": scored, "score_forward_images": scored * per_spec,
            "estimated_front": [_summary(r, {}) for r in estimated]}


def _summary(r: Any, test: dict[str, float]) -> dict[str, Any]:
    return {"id": r.trial_id, "state": r.state, "tag": r.spec.tag, "macs": r.costs.get("macs"),
            "accuracy": r.accuracy, "test": test.get(r.trial_id), "epochs": r.epochs,
            "spec": r.spec.to_dict()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, seed) for seed in args.seeds for s in args.strategies]  # interleaved: fair load
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run_one, s, seed, args) for s, seed in jobs]:
            future.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULT_BUDGET", "STRATEGIES", "estimate", "run_key", "run_one"]

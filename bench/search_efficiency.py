"""Search efficiency at equal compute: hypervolume of (accuracy, MACs) against epochs spent.

Does the default strategy find better (accuracy, MACs) fronts than the obvious alternatives for
the same training compute? Strategies (same space, task, training settings and epoch budget):
    default   TPE (multi-objective) + `pareto` pruner (MO-ASHA), cheapest corner first
    random    random sampler, no pruning (pure random search: no anchor)
    tpe_sha   TPE + `sha` (with two objectives: accuracy-only ASHA on the same rungs), cheapest
              corner first like the default (`--no-anchor` turns it off for both)

Each run drives the real `nas.search.controller.SearchController` (Optuna study, pruner,
trials.csv) and trains every proposal for real with `trials.trial.Trial`, serially in one
process with one torch thread: a strategy comparison needs no Ray, and counting epochs (not
seconds) makes the budget independent of machine load. Runs go to a process pool (`--jobs`).

Hypervolume: objectives (val top-1 in [0, 1], log10 MACs), reference point (accuracy 0, log10 of
the largest MACs in the space at the training size), normalised by the box up to (accuracy 1,
log10 of the smallest MACs in the space), so 1.0 is a perfect model at the cheapest architecture.
`bench.efficiency_report` turns the runs into the table and the plot.

    python -m bench.search_efficiency --jobs 2 --seeds 0 1 2 3 4 --out runs/bench-efficiency
    python -m bench.search_efficiency --seeds 0 --budget 20 --out runs/bench-eff-smoke
    python -m bench.search_efficiency --report-only --out runs/bench-efficiency
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from bench.efficiency_report import report, run_key
from nas.experiment import ExperimentConfig
from nas.models.costs import static_costs
from nas.search.anchor import cheapest_corner, corner_specs
from nas.search.cli import cost_function
from nas.search.controller import SearchController
from nas.search.objectives import parse_objectives
from nas.search.pareto import hypervolume
from nas.search.strategy import make_pruner, make_sampler
from search_spaces import UserError, get_space
from search_spaces.resnest_space import AnswerTrial
from trials.trial import Trial
from trials.trial_config import build_trial_config

STRATEGIES: dict[str, tuple[str, str]] = {  # name -> (sampler, pruner)
    "default": ("tpe", "pareto"),
    "random": ("random", "none"),
    "tpe_sha": ("tpe", "sha"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=64, help="training epochs per run (all trials)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of a trial at full fidelity")
    p.add_argument("--image-size", type=int, default=8, help="px (digits are natively 8x8)")
    p.add_argument("--train-fraction", type=float, default=0.5, help="stratified train subset")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reduction-factor", type=int, default=None,
                   help="pruner eta (default: make_pruner's default)")
    p.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="TPE strategies evaluate the space's cheapest corner first, as the search "
                        "does by default (random search never does)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-efficiency"))
    p.add_argument("--plot", type=Path, default=Path("docs/search_efficiency.png"))
    p.add_argument("--report-only", action="store_true", help="re-read runs in --out, re-plot")
    return p.parse_args(argv)


def run_one(strategy: str, seed: int, args: argparse.Namespace) -> Path:
    """One search run; writes OUT/STRATEGY-sSEED.json and returns its path."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, pruner = STRATEGIES[strategy]
    anchored = args.anchor and sampler != "random"
    name = run_key({"strategy": strategy, "sampler": sampler, "anchor": anchored})
    exp = args.out / f"{name}-s{seed}"
    exp.mkdir(parents=True, exist_ok=True)
    # trials is a cap that never binds (every trial costs >= 1 epoch); the sampler's start-up
    # size is what the search CLI would give for the number of full trials the budget buys.
    config = ExperimentConfig(
        name=exp.name, space="resnest", preset="small", data="digits",
        image_size=args.image_size, objectives=("accuracy", "macs"), epochs=args.epochs,
        trials=args.budget, time_budget_s=1e9, sampler=sampler, pruner=pruner, seed=seed,
        storage="", train={"batch_size": args.batch_size},
    )
    objectives = parse_objectives("accuracy,macs")
    extra = {} if args.reduction_factor is None else {"reduction_factor": args.reduction_factor}
    study = optuna.create_study(
        directions=[o.direction for o in objectives],
        sampler=make_sampler(sampler, seed=seed, n_trials=args.budget // args.epochs),
        pruner=make_pruner(pruner, objectives, epochs=args.epochs, **extra),
    )

    def trial_config(trial_id: str, spec: Any, costs: Any,
                     resume_from: str | None) -> dict[str, Any]:
        return {"spec": spec.to_dict(), "data": "digits", "image_size": args.image_size,
                "epochs": args.epochs, "seed": seed, "train_fraction": args.train_fraction,
                **config.train}

    space = get_space("resnest")
    seeds = [cheapest_corner(space, config)] if anchored else []
    ctrl = SearchController(config, exp, study, space, objectives, cost_function(config),
                            trial_config, seed_specs=seeds, log=lambda _: None)
    low, high = macs_range(args.image_size)
    spent, history, started, train_s = 0, [(0, 0.0)], time.perf_counter(), 0.0
    while spent < args.budget and (proposal := ctrl.next_trial()) is not None:
        trial_id, trial_cfg = proposal
        try:
            trial = Trial(build_trial_config(trial_cfg), threads=1)
        except Exception as err:  # e.g. a spec the builder refuses: FAIL, no epochs spent
            ctrl.on_complete(trial_id, None, error=f"{type(err).__name__}: {err}")
            continue
        last: dict[str, Any] | None = None
        for last in trial.run():
            spent += 1
            train_s += last["epoch_seconds"]
            if ctrl.on_result(trial_id, last):
                break
            if spent >= args.budget and not trial.done:
                ctrl.pruned[trial_id] = "stopped: epoch budget spent"
                break
        ctrl.on_complete(trial_id, last)
        history.append((spent, front_hypervolume(ctrl.front(), low, high)))
    result = {
        "strategy": strategy, "seed": seed, "sampler": sampler, "pruner": pruner,
        "anchor": bool(seeds), "reduction_factor": getattr(study.pruner, "reduction_factor", None),
        "budget": args.budget, "epochs_spent": spent, "history": history,
        "macs_range": [low, high], "wall_s": time.perf_counter() - started,
        "train_s": train_s, "counts": ctrl.counts(),
        "front": [_summary(r) for r in ctrl.front()],
        "trials": [_summary(r) for r in ctrl.records.values()],
    }
    path = args.out / f"{name}-s{seed}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"{strategy} seed {seed}: {spent} epochs, hv {history[-1][1]:.4f}, "
          f"{result['counts']}, {result['wall_s']:.0f}s", flush=True)
    return path


def _summary(r: Any) -> dict[str, Any]:
    return {"id": r.trial_id, "state": r.state, "tag": r.spec.tag, "macs": r.costs.get("macs"),
            "accuracy": r.accuracy, "epochs": r.epochs}


def macs_range(image_size: int) -> tuple[float, float]:
    """(smallest, largest) MACs of the small resnest space at `image_size`: the cheapest corners
    (`nas.search.anchor.corner_specs`) and every valid all-largest corner."""
    space = get_space("resnest")
    p = space.preset
    config = ExperimentConfig(name="x", space="resnest", preset="small", data="digits",
                              image_size=image_size, objectives=("accuracy", "macs"), epochs=1,
                              trials=1, time_budget_s=1.0, sampler="tpe", pruner="none", seed=0,
                              storage="")
    low = min(static_costs(s, image_size).macs for s in corner_specs(space, config))
    high = 0
    for stem, avg_down, avd, first, radix, card in itertools.product(
            p.stem, p.avg_down, p.avd, p.avd_first, p.usable_radix, p.cardinality):
        answers = {"stem": stem, "stem_width": max(p.stem_width), "base_planes": max(p.base_planes),
                   "avg_down": avg_down, "avd": avd, "avd_first": first,
                   "attn_reduction": min(p.attn_reduction), "attn_min_width": max(p.attn_min_width),
                   "dropout": 0.0}
        for i, (_, deepest) in enumerate(p.stage_depths):
            answers.update({f"s{i + 1}_depth": deepest, f"s{i + 1}_radix": radix,
                            f"s{i + 1}_cardinality": card, f"s{i + 1}_width": max(p.width)})
        try:
            spec = space.suggest(AnswerTrial(answers)).replace(num_classes=10, in_channels=1)
            high = max(high, static_costs(spec, image_size).macs)
        except (UserError, KeyError):
            continue
    return float(low), float(high)


def front_hypervolume(front: list[Any], low: float, high: float) -> float:
    """Normalised hypervolume of (accuracy, log10 MACs); see the module docstring."""
    if not front:
        return 0.0
    values = np.array([[r.accuracy, np.log10(r.costs["macs"])] for r in front], dtype=float)
    box = np.log10(high) - np.log10(low)
    return hypervolume(values, [True, False], [0.0, np.log10(high)]) / box


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        jobs = [(s, seed) for seed in args.seeds for s in args.strategies]  # interleaved: fair load
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(run_one, s, seed, args) for s, seed in jobs]:
                future.result()
    # --report-only reports every run in --out (ablations without the anchor included).
    print(report(args.out, args.plot, None if args.report_only else args.strategies))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Searches replayed on ResNeSt-Bench: what random search, with or without the search's pruner,
would have found, read off the table's curves instead of training.

The table's uniform samples (first seed) are draws of the small space trained with the quick
start's full-fidelity protocol, so a random permutation of them is a random search, and its
prefix that fits a compute budget is random search at that budget. With a pruner the replay asks
the search's own `ParetoPruner` (through a multi-objective Optuna study, as the controller does)
after every epoch of the trial's recorded curve, and a pruned trial spends only the epochs it
ran. Compute and hypervolume are those of `bench.front_quality`.

    python -m bench.table_search                       # the rung/eta choice, on the table
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from bench.front_quality import front_of, macs_range, normalised_hypervolume
from bench.resnest_bench import TABLE
from bench.resnest_bench_report import load
from nas.search.pruner import INTERMEDIATE_ATTR, ParetoPruner


@dataclass(frozen=True)
class Replay:
    """One replayed search: hypervolume after each finished trial, against compute spent."""

    compute: tuple[float, ...]  # MAC-epochs spent when each trial finished (0 first)
    hypervolume: tuple[float, ...]
    front: tuple[str, ...]  # tags of the final front
    trials: int
    completed: int
    best: float  # the best final val top-1 among completed trials (0 if none)

    def at(self, budget: float) -> float:
        """The hypervolume reached within `budget` MAC-epochs."""
        index = int(np.searchsorted(np.array(self.compute), budget, side="right")) - 1
        return self.hypervolume[max(index, 0)]


def samples(table: pd.DataFrame) -> pd.DataFrame:
    """The uniform samples' rows at the table's first seed, in table order."""
    rows = table[(table["kind"] == "sample") & (table["seed"] == table["seed"].min())]
    return rows.reset_index(drop=True)


def replay(rows: pd.DataFrame, order: Sequence[int], budget: float, low: float, high: float,
           pruner: ParetoPruner | None = None) -> Replay:
    """Random search over `rows` in `order` until `budget` MAC-epochs are spent; the trial that
    crosses the budget is cut there (not completed), as a real search's last trial is."""
    study = optuna.create_study(directions=["maximize", "minimize"]) if pruner else None
    compute, spent, hv, points, tags = [0.0], 0.0, [0.0], [], []
    done = 0
    for i in order:
        if spent >= budget:
            break
        row = rows.iloc[int(i)]
        macs, curve = float(row["macs"]), list(row["curve"])
        trial = study.ask() if study is not None else None
        if trial is not None:
            trial.set_user_attr("macs", macs)
        completed = True
        for epoch in range(1, len(curve) + 1):
            spent += macs
            if spent >= budget and epoch < len(curve):
                completed = False
                break
            if trial is not None and epoch < len(curve):
                trial.set_user_attr(INTERMEDIATE_ATTR, {str(e): a for e, a in
                                                        enumerate(curve[:epoch], 1)})
                frozen = study.get_trials(deepcopy=False)[trial.number]
                if pruner.prune(study, frozen):
                    completed = False
                    break
        if trial is not None:
            if completed:
                study.tell(trial, [curve[-1], macs])
            else:
                study.tell(trial, state=TrialState.PRUNED)
        if completed:
            done += 1
            points.append((curve[-1], macs))
            tags.append(str(row["tag"]))
        compute.append(spent)
        hv.append(normalised_hypervolume(points, low, high))
    front = _front_tags(points, tags)
    best = max((a for a, _ in points), default=0.0)
    return Replay(tuple(compute), tuple(hv), front, len(compute) - 1, done, best)


def _front_tags(points: list[tuple[float, float]], tags: list[str]) -> tuple[str, ...]:
    return tuple(tags[i] for i in front_of(points))


def random_search(table: pd.DataFrame, seed: int, budget: float,
                  pruner: ParetoPruner | None = None) -> Replay:
    """Random search (seeded permutation of the samples) at `budget`, optionally pruned."""
    rows = samples(table)
    low, high = macs_range(int(table["image_size"].iloc[0]))
    order = np.random.default_rng(seed).permutation(len(rows))
    return replay(rows, order, budget, low, high, pruner)


# Rung settings compared on the table: (first rung, eta); None is no pruning.
SETTINGS: tuple[tuple[int, int] | None, ...] = (None, (2, 2), (2, 3), (3, 2), (3, 3))


def rung_choice(table: pd.DataFrame, budgets: Sequence[float], repeats: int) -> pd.DataFrame:
    """Each rung setting against no pruning on the same `repeats` random orders: the mean
    hypervolume and best completed val top-1 at each budget, and their paired differences from
    no pruning (mean and standard error over the orders)."""
    out = []
    for budget in budgets:
        runs = {}
        for setting in SETTINGS:
            runs[setting] = []
            for seed in range(repeats):
                pruner = None if setting is None else ParetoPruner(
                    ("macs",), min_resource=setting[0], reduction_factor=setting[1])
                r = random_search(table, 1000 + seed, budget, pruner)
                runs[setting].append((r.at(budget), r.best))
        base = np.array(runs[None])
        for setting, values in runs.items():
            v = np.array(values)
            diff = v - base
            se = diff.std(axis=0, ddof=1) / np.sqrt(repeats)
            out.append({
                "budget (G MAC-epochs)": budget / 1e9,
                "setting": "no pruning" if setting is None else
                f"first rung {setting[0]}, eta {setting[1]}",
                "HV": v[:, 0].mean(), "HV - none": diff[:, 0].mean(), "SE": se[0],
                "best val": v[:, 1].mean(), "best - none": diff[:, 1].mean(), "SE ": se[1],
                "trials": np.mean([0]), "orders": repeats,
            })
    return pd.DataFrame(out).drop(columns=["trials"])


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table of `frame` (floats to 4 places)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.table_search", description=__doc__.split(
        "\n")[0])
    p.add_argument("--table", type=Path, default=TABLE, help=f"the CSV (default: {TABLE})")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5e9, 1e9, 2e9])
    p.add_argument("--repeats", type=int, default=100, help="random orders per cell")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = rung_choice(load(args.table), args.budgets, args.repeats)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Replay", "random_search", "replay", "rung_choice", "samples"]

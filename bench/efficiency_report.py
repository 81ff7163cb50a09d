"""Issue 19's evidence: the default search against random search and the hand-designed family at
equal training compute, on Fashion-MNIST.

Reads the searches `bench.search_efficiency` ran (OUT/*-sSEED.json: (a) the default, (d) the
default without anchors, (a') with the cheapest corner only, and any other strategy there) and
ResNeSt-Bench (random search (b) replayed on the same seeds by `bench.table_search`; the
hand-designed family (c) as trained there). Prints markdown: hypervolume against compute (mean
+- std over seeds), the targets, how many hand-designed points each default front dominates, and
every front member's test accuracy; writes the plot. Compute and hypervolume are defined in
`bench.front_quality`.

    python -m bench.efficiency_report --out runs/evidence [--plot docs/search_evidence.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.front_quality import dominates, normalised_hypervolume
from bench.resnest_bench import TABLE
from bench.resnest_bench_report import load, noise
from bench.search_efficiency import run_key
from bench.table_search import random_search
from search_spaces import ArchSpec

LABELS = {"default": "(a) default: TPE + pareto pruner + family anchors",
          "default_cheapest": "(a') TPE + pareto pruner + cheapest corner only (the default "
                              "before 2026-12-07)",
          "random": "(b) random search, no pruning",
          "default_noanchor": "(d) default without anchors",
          "tpe_sha": "TPE + accuracy-only SHA", "tpe_sha_noanchor": "TPE + SHA, no anchor"}
GRID = 400  # points of the compute axis


def load_runs(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished runs in `out` by strategy key, in seed order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*-s*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run_key(run), []).append(run)
    for rs in runs.values():
        rs.sort(key=lambda r: r["seed"])
    return runs


def step_curve(compute: list[float], hv: list[float], grid: np.ndarray) -> np.ndarray:
    """The hypervolume reached by each compute of `grid` (a step function of finished trials)."""
    index = np.searchsorted(np.asarray(compute, dtype=float), grid, side="right") - 1
    return np.asarray(hv, dtype=float)[np.clip(index, 0, None)]


def first_reach(grid: np.ndarray, values: np.ndarray, target: float) -> float | None:
    hits = np.flatnonzero(values >= target - 1e-12)
    return float(grid[hits[0]]) if len(hits) else None


def hand_family(table: pd.DataFrame) -> pd.DataFrame:
    """Each hand-designed point: MACs, mean val and test top-1 over its seeds, seeds."""
    hand = table[table["kind"] == "hand"]
    return hand.groupby("tag").agg(macs=("macs", "first"), val=("val_top1", "mean"),
                                   test=("test_top1", "mean"), seeds=("seed", "count"),
                                   epochs=("epochs", "first")).sort_values("macs")


def report(out: Path, table_path: Path, plot: Path | None) -> str:
    runs = load_runs(out)
    if "default" not in runs:
        return f"no default runs in {out}"
    table = load(table_path)
    sizes = {int(r["image_size"]) for rs in runs.values() for r in rs}
    if sizes != {int(table["image_size"].iloc[0])}:
        raise SystemExit(f"error: the runs in {out} trained at {sorted(sizes)} px but "
                         f"{table_path} at {int(table['image_size'].iloc[0])} px: they compare "
                         "only at one image size")
    budget = min(r["budget"] for rs in runs.values() for r in rs)
    low, high = runs["default"][0]["macs_range"]
    seeds = [r["seed"] for r in runs["default"]]
    grid = np.linspace(0.0, budget, GRID + 1)
    curves = {k: np.stack([step_curve([h[0] for h in r["history"]], [h[2] for h in r["history"]],
                                      grid) for r in rs]) for k, rs in runs.items()}
    # (b) on every seed a strategy ran: each is compared with random search on its own seeds.
    # `seeds_of` names the seeds of every row: each strategy's, and each (b) replay's.
    seeds_of = {k: [r["seed"] for r in rs] for k, rs in runs.items()}
    by_seed = {s: random_search(table, s, budget) for s in sorted(set(sum(seeds_of.values(), [])))}
    random_on = {s: step_curve(list(r.compute), list(r.hypervolume), grid)
                 for s, r in by_seed.items()}
    replays = [by_seed[s] for s in seeds]
    for row_seeds in [seeds, *sorted({tuple(v) for v in seeds_of.values()} - {tuple(seeds)})]:
        key = random_key(list(row_seeds), seeds)
        curves[key] = np.stack([random_on[s] for s in row_seeds])
        seeds_of[key] = list(row_seeds)
    hand = hand_family(table)
    hand_compute = float((hand["macs"] * hand["epochs"]).sum())
    hand_hv = normalised_hypervolume(zip(hand["val"], hand["macs"], strict=True), low, high)
    stds, _ = noise(table[table["kind"] == "sample"])
    margin = float(stds.median()) if len(stds) else 0.0

    lines = [f"Budget {budget / 1e9:g} G MAC-epochs per run; hypervolume "
             f"normalised, reference (accuracy 0, {high / 1e6:.1f} MMACs), box to "
             f"{low / 1e6:.2f} MMACs. (b) is replayed on ResNeSt-Bench's "
             f"{int(((table['kind'] == 'sample') & (table['seed'] == 0)).sum())} uniform samples.",
             "", "| strategy | seeds | HV at 25% | at 50% | at 100% of the budget | trials "
             "(complete) per run | wall s per run |", "|---|---|---|---|---|---|---|"]
    for key, c in curves.items():
        cells = [f"{c[:, int(GRID * f)].mean():.4f} ± {_std(c[:, int(GRID * f)]):.4f}"
                 for f in (0.25, 0.5, 1.0)]
        if key.startswith("random"):
            counts = ", ".join(f"{by_seed[s].trials} ({by_seed[s].completed})"
                               for s in seeds_of[key])
            wall = "- (table)"
        else:
            counts = ", ".join(f"{sum(v for k, v in r['counts'].items() if k != 'INFEASIBLE')}"
                               f" ({r['counts']['COMPLETE']})" for r in runs[key])
            wall = f"{np.mean([r['wall_s'] for r in runs[key]]):.0f}"
        lines.append(f"| {label(key)} | {', '.join(map(str, seeds_of[key]))} | "
                     f"{' | '.join(cells)} | {counts} | {wall} |")
    many = np.array([random_search(table, 1000 + i, budget).at(budget) for i in range(100)])
    lines.append(f"| (b) over 100 more random orders (seeds 1000-1099) | 100 | - | - | "
                 f"{many.mean():.4f} ± {_std(many):.4f} | - | - (table) |")
    lines.append(f"| (c) hand-designed family, {len(hand)} points | - | - | - | {hand_hv:.4f} at "
                 f"{hand_compute / 1e9:.2f} G MAC-epochs ({hand_compute / budget:.1f}x the "
                 f"budget) | {len(hand)} | - |")
    lines += ["", *targets(curves, grid, budget, seeds_of, seeds)]
    for key in ("default", "default_cheapest"):
        if key in runs:
            lines += ["", *dominance(runs[key], hand, margin, table, LABELS[key])]
    for key in ("default", "default_cheapest", "default_noanchor"):
        if key in runs:
            lines += ["", *front_members(key, runs[key])]
    lines += ["", *random_fronts(table, replays, seeds)]
    if plot is not None:
        names = {k: label(k) for k in curves}
        for k in (k for k in curves if k.startswith("random")):
            names[k] += f", seeds {', '.join(map(str, seeds_of[k]))}"
        _plot(curves, grid, plot, (hand_compute, hand_hv), budget, names)
        lines += ["", f"plot: {plot}"]
    return "\n".join(lines)


def label(key: str) -> str:
    if key.startswith("random@"):
        return LABELS["random"]  # on other seeds, which its row names
    return LABELS.get(key, key)


def random_key(row_seeds: list[int], seeds: list[int]) -> str:
    """The curve key of random search (b) replayed on `row_seeds`: `random` on the default's
    own seeds, `random@[...]` on another strategy's."""
    return "random" if row_seeds == seeds else f"random@{row_seeds}"


def targets(curves: dict[str, np.ndarray], grid: np.ndarray, budget: float,
            seeds_of: dict[str, list[int]], seeds: list[int]) -> list[str]:
    lines = ["Targets (mean over seeds; each strategy against (b) on its own seeds):"]
    for key in ("default", "default_cheapest", "default_noanchor"):
        if key not in curves:
            continue
        c = curves[key]
        own = seeds_of[key]
        b = curves[random_key(own, seeds)][:, -1]
        wins = int((c[:, -1] > b).sum())
        lines.append(f"- {LABELS[key]} beats (b) at the budget: {c[:, -1].mean():.4f} vs "
                     f"{b.mean():.4f} (paired per seed: ahead in {wins} of {len(b)}) -> "
                     f"{'met' if c[:, -1].mean() > b.mean() else 'MISSED'}")
        reach = first_reach(grid, c.mean(axis=0), b.mean())
        per_seed = ", ".join(_share(first_reach(grid, row, b.mean()), budget) for row in c)
        lines.append(f"- {LABELS[key]} reaches (b)'s final mean HV {b.mean():.4f}: at "
                     f"{_share(reach, budget)} of the budget (per seed: {per_seed}) -> "
                     f"{'met' if reach is not None and reach <= budget / 2 else 'MISSED'}")
    return lines


def dominance(runs: list[dict[str, Any]], hand: pd.DataFrame, margin: float,
              table: pd.DataFrame, label: str) -> list[str]:
    """How many hand-designed points each default front dominates: a front member with higher
    accuracy by more than `margin` at no more MACs, on test (the search never saw it) and on
    validation; and, as the ceiling of a search that finds the table's best, how many the front
    of every uniform sample in the table dominates."""
    lines = [f"Hand-designed points dominated by the fronts of {label} (higher top-1 by more than "
             f"{margin * 100:.2f} pts, the median seed-to-seed std of val top-1, at no more MACs; "
             f"the hand points' accuracy is their mean over seeds):", "",
             "| seed | on test | on val | front members |", "|---|---|---|---|"]
    shares = []
    for r in runs:
        on_test = sum(dominates([(m["test"], m["macs"]) for m in r["front"]
                                 if m["test"] is not None], (t, mc), margin)
                      for t, mc in zip(hand["test"], hand["macs"], strict=True))
        on_val = sum(dominates([(m["accuracy"], m["macs"]) for m in r["front"]], (v, mc), margin)
                     for v, mc in zip(hand["val"], hand["macs"], strict=True))
        shares.append(on_test / len(hand))
        lines.append(f"| {r['seed']} | {on_test}/{len(hand)} | {on_val}/{len(hand)} | "
                     f"{len(r['front'])} |")
    mean = float(np.mean(shares))
    samples = table[(table["kind"] == "sample") & (table["seed"] == table["seed"].min())]
    ceiling = {name: sum(dominates(list(zip(samples[name], samples["macs"], strict=True)),
                                   (a, mc), margin)
                         for a, mc in zip(hand[key], hand["macs"], strict=True))
               for name, key in (("test_top1", "test"), ("val_top1", "val"))}
    lines += ["", f"- mean share dominated on test: {mean:.0%} (target >= 67%) -> "
              f"{'met' if mean >= 2 / 3 else 'MISSED'}",
              f"- ceiling: all {len(samples)} uniform samples of the table together dominate "
              f"{ceiling['test_top1']}/{len(hand)} on test, {ceiling['val_top1']}/{len(hand)} "
              "on val"]
    return lines


def front_members(key: str, runs: list[dict[str, Any]]) -> list[str]:
    lines = [f"Front members of {label(key)} (MMACs, val %, test %, tag):", ""]
    for r in runs:
        members = sorted(r["front"], key=lambda m: m["macs"])
        lines.append(f"- seed {r['seed']}: " + "; ".join(
            f"{m['macs'] / 1e6:.2f}, {m['accuracy'] * 100:.1f}, "
            f"{_percent(m['test'])}, {m['tag']} {family(m['spec'])}"
            for m in members))
    return lines


def family(spec: dict[str, Any]) -> str:
    """The (stem, avg_down) family, which the tag leaves out: `(deep, avg_down)`."""
    return f"({spec['stem']}, {'avg_down' if spec['avg_down'] else 'conv shortcut'})"


def random_fronts(table: pd.DataFrame, replays: list[Any], seeds: list[int]) -> list[str]:
    rows = table[(table["kind"] == "sample") & (table["seed"] == table["seed"].min())]
    by_tag = rows.set_index("tag")
    lines = ["Front members of (b) random search (MMACs, val %, test %, tag):", ""]
    for seed, r in zip(seeds, replays, strict=True):
        members = sorted((by_tag.loc[t] for t in r.front), key=lambda m: m["macs"])
        lines.append(f"- seed {seed}: " + "; ".join(
            f"{m['macs'] / 1e6:.2f}, {m['val_top1'] * 100:.1f}, {m['test_top1'] * 100:.1f}, "
            f"{ArchSpec.from_json(m['spec']).tag} ({m.name})" for m in members))
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def _share(compute: float | None, budget: float) -> str:
    return "never" if compute is None else f"{compute / budget:.0%}"


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _plot(curves: dict[str, np.ndarray], grid: np.ndarray, plot: Path,
          hand: tuple[float, float], budget: float, names: dict[str, str]) -> None:
    # matplotlib only for the plot, and its Agg backend chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = grid / 1e9
    for key, c in curves.items():
        mean, std = c.mean(axis=0), c.std(axis=0, ddof=1) if len(c) > 1 else 0 * c[0]
        ax.plot(x, mean, label=f"{names[key]} (n={len(c)})",
                lw=2.4 if key == "default" else 1.4, ls="--" if "noanchor" in key else "-")
        ax.fill_between(x, mean - std, mean + std, alpha=0.18)
    ax.axhline(hand[1], color="k", ls=":", lw=1.2,
               label=f"(c) hand-designed family, all 32 points ({hand[0] / 1e9:.1f} G)")
    ax.set_xlim(0, budget / 1e9)
    ax.set_xlabel("training compute spent (G MAC-epochs, all trials)")
    ax.set_ylabel("hypervolume (val top-1 x log10 MACs), normalised")
    ax.set_title("Fashion-MNIST subset, 16 px: mean ± std over seeds")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.efficiency_report",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/evidence"), help="the runs' directory")
    p.add_argument("--table", type=Path, default=TABLE, help=f"ResNeSt-Bench (default {TABLE})")
    p.add_argument("--plot", type=Path, default=Path("docs/search_evidence.png"))
    args = p.parse_args(argv)
    print(report(args.out, args.table, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["hand_family", "load_runs", "report", "step_curve"]

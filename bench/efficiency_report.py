"""Summary of `bench.search_efficiency` runs: hypervolume against epochs, the targets, the plot.

Reads the runs' JSON files in a directory and returns a markdown report (mean ± std over seeds);
`python -m bench.search_efficiency --report-only --out DIR` prints it and rewrites the plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {"default": "(a) TPE + pareto pruner", "random": "(b) random, no pruning",
          "tpe_sha": "(c) TPE + accuracy-only SHA",
          "default_noanchor": "(a') as (a), no anchor",
          "tpe_sha_noanchor": "(c') as (c), no anchor"}
GOOD = 0.85  # "useful" accuracy for the cheap-end statement


def run_key(run: dict[str, Any]) -> str:
    """Strategy name, suffixed `_noanchor` for a TPE run without the cheapest-corner anchor."""
    if run.get("anchor") is False and run.get("sampler") != "random":
        return f"{run['strategy']}_noanchor"
    return run["strategy"]


def load_runs(out: Path, strategies: list[str] | None) -> dict[str, list[dict[str, Any]]]:
    """Runs in `out` by strategy key (all of them when `strategies` is None), seed order."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies or LABELS}
    for path in sorted(out.glob("*-s*.json")):
        run = json.loads(path.read_text())
        if strategies is None:
            runs.setdefault(run_key(run), [])
        if run_key(run) in runs:
            runs[run_key(run)].append(run)
    for rs in runs.values():
        rs.sort(key=lambda r: r["seed"])
    return runs


def curve(run: dict[str, Any], budget: int) -> np.ndarray:
    """Hypervolume after each epoch 0..budget (a step function of the completed trials)."""
    out = np.zeros(budget + 1)
    for spent, hv in run["history"]:
        out[min(spent, budget):] = hv
    return out


def first_epoch(values: np.ndarray, target: float) -> int | None:
    hits = np.flatnonzero(values >= target - 1e-12)
    return int(hits[0]) if len(hits) else None


def report(out: Path, plot: Path, strategies: list[str] | None) -> str:
    """Markdown summary of the runs in `out`; writes the plot."""
    runs = {s: r for s, r in load_runs(out, strategies).items() if r}
    budget = min(run["budget"] for rs in runs.values() for run in rs)
    curves = {s: np.stack([curve(r, budget) for r in rs]) for s, rs in runs.items()}
    lines = [f"budget {budget} epochs per run; hypervolume normalised (see script docstring)", "",
             "| strategy | seeds | final HV mean ± std | per seed | trials (complete/pruned) "
             "| epochs | train s | wall s |", "|---|---|---|---|---|---|---|---|"]
    for s, rs in runs.items():
        final = curves[s][:, -1]
        counts = [f"{r['counts']['COMPLETE'] + r['counts']['PRUNED'] + r['counts']['FAIL']}"
                  f" ({r['counts']['COMPLETE']}/{r['counts']['PRUNED']})" for r in rs]
        lines.append(
            f"| {LABELS.get(s, s)} | {len(rs)} | {final.mean():.4f} ± {_std(final):.4f} "
            f"| {', '.join(f'{v:.4f}' for v in final)} | {', '.join(counts)} "
            f"| {', '.join(str(r['epochs_spent']) for r in rs)} "
            f"| {np.mean([r['train_s'] for r in rs]):.0f} "
            f"| {np.mean([r['wall_s'] for r in rs]):.0f} |")
    lines += ["", "hypervolume mean ± std at epochs " + ", ".join(
        str(e) for e in _checkpoints(budget)) + ":"]
    for s in runs:
        lines.append(f"- {s}: " + "; ".join(
            f"{curves[s][:, e].mean():.4f} ± {_std(curves[s][:, e]):.4f}"
            for e in _checkpoints(budget)))
    if "default" in runs and "random" in runs:
        lines += ["", *_targets(curves, runs, budget)]
    lines += ["", "cheapest front member per run, and the cheapest with val top-1 >= "
              f"{GOOD:.0%} (MACs at the training size, val top-1, tag):"]
    for s, rs in runs.items():
        for r in rs:
            good = [t for t in r["front"] if t["accuracy"] >= GOOD]
            lines.append(f"- {s} seed {r['seed']}: {_cheapest(r['front'])}; "
                         f">= {GOOD:.0%}: {_cheapest(good)} (front of {len(r['front'])})")
    _plot(curves, plot, budget)
    lines += ["", f"plot: {plot}"]
    return "\n".join(lines)


def _cheapest(members: list[dict[str, Any]]) -> str:
    if not members:
        return "none"
    t = min(members, key=lambda m: m["macs"])
    return f"{t['macs'] / 1e6:.3f} M MACs, {t['accuracy']:.1%}, {t['tag']}"


def _std(values: np.ndarray) -> np.ndarray | float:
    """Sample standard deviation over seeds (axis 0); 0 with one seed."""
    return values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(values[0])


def _checkpoints(budget: int) -> list[int]:
    return sorted({round(budget * f) for f in (0.25, 0.5, 0.75, 1.0)})


def _targets(curves: dict[str, np.ndarray], runs: dict[str, Any], budget: int) -> list[str]:
    a, b = curves["default"], curves["random"]
    target = b[:, -1].mean()
    reach_mean = first_epoch(a.mean(axis=0), target)
    per_seed = [first_epoch(c, target) for c in a]
    lines = [
        f"target 1, (a) >= (b) at {budget} epochs: {a[:, -1].mean():.4f} vs {b[:, -1].mean():.4f}"
        f" -> {'met' if a[:, -1].mean() >= target else 'MISSED'}",
        f"target 2, (a) reaches (b)'s final mean HV {target:.4f}: mean curve at epoch "
        f"{reach_mean} ({_share(reach_mean, budget)} of (b)'s {budget}); per seed "
        f"{', '.join(str(e) for e in per_seed)} -> "
        f"{'met' if reach_mean is not None and reach_mean <= budget / 2 else 'MISSED'}",
    ]
    return lines


def _share(epoch: int | None, budget: int) -> str:
    return "never" if epoch is None else f"{epoch / budget:.0%}"


def _plot(curves: dict[str, np.ndarray], plot: Path, budget: int) -> None:
    # matplotlib only for the plot, and its Agg backend chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(budget + 1)
    for s, c in curves.items():
        mean, std = c.mean(axis=0), _std(c)
        ax.plot(x, mean, label=f"{LABELS.get(s, s)} (n={len(c)})",
                lw=2.4 if s == "default" else 1.4, zorder=3 if s == "default" else 2,
                ls="--" if s.endswith("_noanchor") else "-")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("training epochs spent (all trials)")
    ax.set_ylabel("hypervolume (accuracy x log10 MACs), normalised")
    ax.set_title("Search efficiency on digits: mean ± std over seeds")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)

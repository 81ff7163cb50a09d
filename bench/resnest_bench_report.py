"""What ResNeSt-Bench says: seed-to-seed noise, and how well cheap estimators rank final accuracy.

Reads the table `bench.resnest_bench` writes and prints markdown: the noise (std of val_top1 per
architecture over its seeds; Kendall tau between two seeds' rankings, the ceiling of any
estimator), the rank correlation (Kendall tau, Spearman rho) of params, MACs, latency and the
validation accuracy after each epoch with the final val_top1 of the uniform samples (seed 0), and
the hand-designed family's mean +- std, and what the search's family anchors (kind `corner`)
score beside it. The slice's rows (kind `slice`, one seed) are counted
here and ranked by `bench.supernet_ranking`; the noise and the estimators come from the uniform
samples only (the hand-designed points' spread is in their own table).

    python -m bench.resnest_bench_report [--table docs/raw/resnest-bench/resnest_bench.csv]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.resnest_bench import TABLE


def load(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    table["curve"] = table["curve"].map(json.loads)
    return table


def noise(table: pd.DataFrame) -> tuple[pd.Series, dict[tuple[int, int], tuple[float, int]]]:
    """(std of val_top1 per uniform sample with >= 2 seeds, Kendall tau of each seed pair with the
    number of samples both hold). Only the uniform samples: they are the population every
    estimator ranks, and the hand-designed points (near-equal accuracies by design) would pull
    the ceiling down once their repeats are in; their spread is in the hand-designed table."""
    samples = table[table["kind"] == "sample"]
    by_seed = samples.pivot_table(index="tag", columns="seed", values="val_top1")
    several = by_seed[by_seed.notna().sum(axis=1) >= 2]
    taus = {}
    for a, b in itertools.combinations(by_seed.columns, 2):
        both = by_seed[[a, b]].dropna()
        if len(both) >= 3:
            taus[(a, b)] = (float(both[a].corr(both[b], method="kendall")), len(both))
    return several.std(axis=1, ddof=1), taus


def estimators(table: pd.DataFrame) -> pd.DataFrame:
    """Kendall tau and Spearman rho with the final val_top1, over the seed-0 uniform samples."""
    rows = table[(table["kind"] == "sample") & (table["seed"] == table["seed"].min())].copy()
    if len(rows) < 3:  # nothing to rank
        return pd.DataFrame(columns=["estimator", "kendall_tau", "spearman_rho", "n"])
    epochs = int(rows["epochs"].max())
    candidates = {"params": rows["params"], "MACs": rows["macs"], "latency": rows["latency_ms"]}
    for k in range(1, epochs):
        candidates[f"val after epoch {k}"] = rows["curve"].map(lambda c, k=k: c[k - 1])
    out = []
    for name, values in candidates.items():
        out.append({"estimator": name,
                    "kendall_tau": values.corr(rows["val_top1"], method="kendall"),
                    "spearman_rho": values.corr(rows["val_top1"], method="spearman"),
                    "n": len(rows)})
    return pd.DataFrame(out)


def axes(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the global axes that vary among `rows`, one column each with the spec's values; the
    per-stage axes, one numeric column per stage and axis) of each row's spec."""
    specs = rows["spec"].map(json.loads)
    keys = [k for k in specs.iloc[0] if k != "stages"]
    glob = pd.DataFrame({k: specs.map(lambda d, k=k: d[k]) for k in keys}, index=rows.index)
    glob = glob.loc[:, glob.nunique() > 1]
    stages = pd.DataFrame({f"stage {i + 1} {axis}": specs.map(lambda d, i=i, a=axis: float(
        d["stages"][i][a]) if i < len(d["stages"]) else 0.0)
        for i in range(specs.map(lambda d: len(d["stages"])).max())
        for axis in specs.iloc[0]["stages"][0]}, index=rows.index)
    return glob, stages


def held_out_r2(features: pd.DataFrame, target: pd.Series, folds: int = 5,
                repeats: int = 10) -> float:
    """Share of `target`'s variance a least-squares fit on `features` (categories one-hot)
    predicts out of fold, averaged over `repeats` random fold splits (seeds 0..repeats-1)."""
    x = pd.get_dummies(features, drop_first=True).astype(float).to_numpy()
    x = np.hstack([np.ones((len(x), 1)), x])
    y = target.to_numpy(dtype=float)
    scores = []
    for seed in range(repeats):
        order = np.random.default_rng(seed).permutation(len(y))
        predicted = np.empty_like(y)
        for fold in np.array_split(order, folds):
            fit = np.setdiff1d(order, fold)
            coef, *_ = np.linalg.lstsq(x[fit], y[fit], rcond=None)
            predicted[fold] = x[fold] @ coef
        scores.append(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return float(np.mean(scores))


def what_matters(table: pd.DataFrame) -> list[str]:
    """Markdown: how much of the uniform samples' final val_top1 (first seed) the global axes and
    the per-stage axes predict out of fold, and each global axis's mean accuracy per value."""
    rows = table[(table["kind"] == "sample") & (table["seed"] == table["seed"].min())]
    if len(rows) < 20:
        return ["- fewer than 20 uniform samples: too few to split the variance"]
    glob, stages = axes(rows)
    target = rows["val_top1"]
    categories = glob.astype(str)  # one-hot in the fit, whatever the values' type
    fits = {"the global axes (one-hot)": categories, "the per-stage axes (numeric)": stages,
            "both": pd.concat([categories, stages], axis=1)}
    lines = [f"Share of the variance of final val_top1 ({len(rows)} uniform samples, std "
             f"{target.std() * 100:.2f} pts) predicted out of fold by a linear fit (5 folds, "
             "mean of 10 splits; below 0: worse than predicting the mean):", ""]
    lines += [f"- {name}: {held_out_r2(x, target):.2f}" for name, x in fits.items()]
    lines += ["", "| global axis | mean val % (count) per value |", "|---|---|"]
    for name in glob:
        groups = target.groupby(glob[name]).agg(["mean", "count"])
        lines.append(f"| {name} | " + ", ".join(
            f"{value}: {r['mean'] * 100:.2f} ({int(r['count'])})"
            for value, r in groups.iterrows()) + " |")
    return lines


def report(table: pd.DataFrame) -> str:
    stds, taus = noise(table)
    kinds = table.drop_duplicates("tag")["kind"].value_counts()
    lines = [f"{len(table)} rows: {table['tag'].nunique()} architectures "
             f"({kinds.get('sample', 0)} uniform samples, {kinds.get('slice', 0)} in the "
             "default supernet's slice), "
             f"{table['epochs'].iloc[0]} epochs on {table['data'].iloc[0]} at "
             f"{table['image_size'].iloc[0]} px, train share {table['train_fraction'].iloc[0]}",
             "", "Seed-to-seed noise of val_top1 (uniform samples with >= 2 seeds):", ""]
    if not len(stds):
        lines.append("- no uniform sample has two seeds yet")
    else:
        lines.append(f"- {len(stds)} samples; std per sample: median "
                     f"{stds.median() * 100:.2f} pts, mean {stds.mean() * 100:.2f} pts, max "
                     f"{stds.max() * 100:.2f} pts")
    for (a, b), (tau, n) in taus.items():
        lines.append(f"- Kendall tau between seeds {a} and {b}: {tau:.3f} over {n} samples")
    ranked = estimators(table)
    lines += ["", "Rank correlation with the final val_top1 (uniform samples, first seed):", ""]
    if ranked.empty:
        lines.append("- fewer than 3 uniform samples: nothing to rank yet")
    else:
        lines += ["| estimator | Kendall tau | Spearman rho | n |", "|---|---|---|---|"]
    for r in ranked.itertuples():
        lines.append(f"| {r.estimator} | {r.kendall_tau:.3f} | {r.spearman_rho:.3f} | {r.n} |")
    lines += ["", "What decides accuracy (uniform samples, first seed):", "", *what_matters(table)]
    hand = per_point(table, "hand")
    if len(stds):
        lines += anchors_against_hand(table, float(stds.median()))
    if len(hand):
        lines += ["", "Hand-designed family (val_top1 mean +- std over seeds; test mean):", "",
                  "| point | MMACs | val % | test % | seeds |", "|---|---|---|---|---|"]
        for tag, r in hand.iterrows():
            lines.append(f"| {tag} | {r['macs'] / 1e6:.2f} | {_spread(r)} | "
                         f"{r['test'] * 100:.2f} | {int(r['seeds'])} |")
    return "\n".join(lines)


def anchors_against_hand(table: pd.DataFrame, margin: float) -> list[str]:
    """The family anchors' rows beside the hand-designed points each dominates (higher mean
    top-1 by more than `margin` at no more MACs), on val and on test."""
    hand, corners = per_point(table, "hand"), per_point(table, "corner")
    if not (len(corners) and len(hand)):
        return []
    lines = ["", "The search's family anchors (kind `corner`: the cheapest network of each stem "
             "and avg_down family, trained first by `nas.search`), and the hand-designed points "
             f"each dominates: higher mean top-1 by more than {margin * 100:.2f} pts (the median "
             "seed-to-seed std) at no more MACs:", "",
             "| anchor | MMACs | val % | test % | seeds | dominates (val) | (test) |",
             "|---|---|---|---|---|---|---|"]
    for tag, r in corners.iterrows():
        dearer = hand[hand["macs"] >= r["macs"]]
        won = [int((r[k] > dearer[k] + margin).sum()) for k in ("mean", "test")]
        lines.append(f"| {tag} | {r['macs'] / 1e6:.2f} | {_spread(r)} | {r['test'] * 100:.2f} | "
                     f"{int(r['seeds'])} | {won[0]}/{len(hand)} | {won[1]}/{len(hand)} |")
    return lines


def per_point(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One row per architecture of `kind`: MACs, val_top1 mean and std, test mean, seeds."""
    return table[table["kind"] == kind].groupby("tag").agg(
        macs=("macs", "first"), mean=("val_top1", "mean"), std=("val_top1", "std"),
        test=("test_top1", "mean"), seeds=("seed", "count")).sort_values("macs")


def _spread(r: pd.Series) -> str:
    return f"{r['mean'] * 100:.2f}" + ("" if pd.isna(r["std"]) else f" +- {r['std'] * 100:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.resnest_bench_report")
    p.add_argument("--table", type=Path, default=TABLE, help=f"the CSV (default: {TABLE})")
    args = p.parse_args(argv)
    print(report(load(args.table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the supernet rank like training? (issue 20, item 4): inherited accuracy against the table.

`train` trains one supernet per recipe (supernet training settings) on the table's own data and
protocol (the shipped Fashion-MNIST subset, the image size and train share of `nas.search`'s
defaults, as every table row), in process with one torch thread, into CACHE/NAME (resumable: a
finished directory is reused, an unfinished one continued), then scores every architecture the
supernet covers with inherited weights after BN recalibration on training batches: the table's
slice (`bench.resnest_bench.slice_spec`, whether or not its rows are trained yet) and every
covered row of the table. It appends one record per recipe to OUT/records.jsonl (the recipe, the
supernet's job and curve, training seconds, training MAC-epochs, scoring seconds and forward
images, and the estimate of each tag); a rerun skips the recipes recorded there.

Training compute is counted exactly: a forward pre-hook on the supernet adds, for every training
forward (each one is back-propagated), the sub-network's MACs x the batch's share of the train
split, so one step of the sandwich costs the MAC-epochs of the sub-networks it trained
(`bench.front_quality`'s MAC-epochs; the largest's forward is also the teacher's). Scoring is
forward-only: its images (calibration batches plus the validation split) are recorded, not
converted.

`report` reads the records and the table and prints markdown: the covered rows that have a
from-scratch `val_top1` are split at random (`SPLIT_SEED`) into a tuning half and a held-out
half; each recipe's Kendall tau and Spearman rho on the tuning half, the recipe chosen there, and
on the held-out half: tau overall, within each radix family (a spec's family is its largest
radix kind: 0 plain, 1 sigmoid gate, >= 2 split attention), within each cost quintile (of the
held-out rows' MACs), beside the cheap estimators on the same rows (params, MACs, the
validation accuracy after each epoch of the row's own curve; epoch 2 is the pruner's first rung)
and the table's seed-to-seed ceiling, with issue 20's targets.

    python -m bench.supernet_ranking train                      # every recipe, resumable
    python -m bench.supernet_ranking report                     # markdown from what exists
    python -m bench.supernet_ranking train --smoke --cache /tmp/sr --out /tmp/sr-out

Item 5 (is it cheaper?): `bench.search_efficiency --strategies supernet`, `bench.supernet_cost`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bench.resnest_bench import DATA, SLICE, TABLE, slice_spec
from bench.resnest_bench_report import load as load_table
from bench.resnest_bench_report import noise
from nas.search.cli import build_parser, config_from_args
from nas.supernet.config import SupernetConfig
from nas.supernet.trainer import (
    SupernetJob,
    SupernetTarget,
    SupernetTrainConfig,
    SupernetTrainer,
    calibration_batches,
    inherited_accuracy,
    job_data,
    load_state,
    load_supernet,
    read_manifest,
    resume_check,
)
from search_spaces import counts
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec
from trials.data import describe

OUT = Path("docs/raw/supernet-ranking")
CACHE = Path("runs/supernet-ranking")
SPLIT_SEED = 0  # the tuning / held-out split of the covered rows
COMPUTE_FILE = "compute.json"  # beside a supernet's manifest: its training MAC-epochs per epoch


@dataclass(frozen=True)
class Recipe:
    """A supernet's training settings (`SupernetTrainConfig` fields) and the calibration batches
    its sub-networks' BN statistics are re-estimated on when scored."""

    name: str
    train: Mapping[str, Any] = field(default_factory=dict)
    calib_batches: int = 16

    @property
    def supernet_name(self) -> str:
        """The cache directory's name: recipes with the same training share one supernet."""
        items = sorted(self.train.items())
        return "-".join(f"{k}{v}" for k, v in items) or "defaults"


# Sized for a 2-core machine shared with the table's runner: a full-train-split epoch of the
# sandwich (largest, smallest and 2 random) is about 0.1 G MAC-epochs and 2 minutes there.
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("e8", {"epochs": 8}),  # the supernet the search trains itself (SUPERNET_EPOCHS)
    Recipe("e8-calib64", {"epochs": 8}, calib_batches=64),  # the same, BN on 4x the batches
    Recipe("e4", {"epochs": 4}),
    Recipe("e4-nodistill", {"epochs": 4, "distill": False}),
    # Progressive shrinking, each radix family's largest first (`nas.supernet.shrink`).
    Recipe("e8-family-first", {"epochs": 8, "shrink": "family-first"}),
)}
DEFAULT_RECIPES = ("e8", "e8-calib64", "e8-family-first", "e4", "e4-nodistill")
# --smoke: 8 px, 5% of train, 2 epochs of 2 batches, 4 slice specs (for the tests).
SMOKE_TARGET = {"image_size": 8, "train_fraction": 0.05}
SMOKE_TRAIN = {"batch_size": 16, "max_batches": 2, "epochs": 2, "calib_batches": 2}
SMOKE_SLICE = 4


def protocol_target(smoke: bool = False) -> SupernetTarget:
    """The table's data and protocol (`nas.search`'s defaults, which every table row uses)."""
    config, _ = config_from_args(build_parser().parse_args(["--data", DATA]))
    image_size = describe(config.data, config.image_size or None).image_size
    target = SupernetTarget(space=config.space, preset=config.preset, data=config.data,
                            image_size=image_size, train_fraction=config.train_fraction)
    if smoke:
        target = SupernetTarget(**{**asdict(target), **SMOKE_TARGET})
    return target


def job_of(recipe: Recipe, smoke: bool = False) -> SupernetJob:
    train = {**recipe.train, **(SMOKE_TRAIN if smoke else {})}
    return SupernetJob(protocol_target(smoke), SupernetConfig(), SupernetTrainConfig(**train))


def train_supernet(job: SupernetJob, path: Path, log: Any = print) -> list[float]:
    """Train `job` into `path` in this process (continuing what it holds); the training MAC-epochs
    of each finished epoch (stored beside the manifest)."""
    compute_file = path / COMPUTE_FILE
    manifest = resume_check(path, job)
    spent: list[float] = json.loads(compute_file.read_text()) if compute_file.exists() else []
    if manifest is not None and len(spent) != manifest.epoch:  # no exact count: start afresh
        shutil.rmtree(path)
        manifest, spent = None, []
    path.mkdir(parents=True, exist_ok=True)
    trainer = SupernetTrainer(job, job_data(job))
    if manifest is not None:
        trainer.load_state_dict(load_state(path, manifest), manifest)
    train_images = len(trainer.data.train)
    tally = [0.0]

    def count(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if module.training:
            x, spec = args
            tally[0] += counts.macs(spec, job.target.image_size) * len(x) / train_images

    hook = trainer.supernet.register_forward_pre_hook(count)
    try:
        while not trainer.done:
            tally[0] = 0.0
            record = trainer.train_epoch()
            spent.append(tally[0])
            trainer.save(path)
            compute_file.write_text(json.dumps(spent))
            log(f"  epoch {record['epoch']}/{job.train.epochs}: val largest "
                f"{record['val_top1_largest']:.4f} smallest {record['val_top1_smallest']:.4f}, "
                f"{tally[0] / 1e9:.3f} G MAC-epochs, {record['epoch_seconds']:.0f}s")
    finally:
        hook.remove()
    return spent


def training_compute(path: Path) -> float:
    """The training MAC-epochs of the finished supernet in `path` (as `train_supernet` counted
    them); refused unless every epoch was counted."""
    manifest = read_manifest(path)
    file = path / COMPUTE_FILE
    spent = json.loads(file.read_text()) if file.exists() else []
    if not manifest.complete or len(spent) != manifest.epoch:
        raise UserError(f"{path}: no training compute for its {manifest.epoch} epochs (train it "
                        "with python -m bench.supernet_ranking train)")
    return float(sum(spent))


def covered_specs(table: pd.DataFrame | None, supernet: SupernetConfig,
                  slice_size: int) -> dict[str, ArchSpec]:
    """Every tag to score: the slice's specs and the table's rows the supernet covers."""
    out = {f"slice:{i}": slice_spec(i) for i in range(slice_size)}
    if table is not None:
        for tag, text in table.drop_duplicates("tag")[["tag", "spec"]].itertuples(index=False):
            spec = ArchSpec.from_json(text)
            if not supernet.violations(spec):
                out.setdefault(tag, spec)
    return out


@torch.no_grad()
def val_loss(supernet: Any, spec: ArchSpec, data: Any, batch_size: int) -> float:
    """Mean validation cross-entropy of `spec` with the BN statistics the supernet holds for it
    (call after `inherited_accuracy`, which recalibrates them)."""
    total, seen = 0.0, 0
    for x, y in data.batches("val", batch_size):
        total += float(F.cross_entropy(supernet(x, spec), y, reduction="sum"))
        seen += len(y)
    return total / max(seen, 1)


def score(path: Path, specs: Mapping[str, ArchSpec], calib_batches: int
          ) -> tuple[dict[str, dict[str, float]], float, int]:
    """(tag -> {"inherited": val top-1, "nll": minus the val cross-entropy}, seconds, forward
    images) for `specs` with the supernet in `path`, each recalibrated on the same
    `calib_batches` training batches. Both rank higher-is-better; the loss has no ties."""
    supernet, manifest = load_supernet(path)
    cfg = manifest.job.train
    data = job_data(manifest.job)
    calibration = calibration_batches(data, cfg.batch_size, calib_batches)
    start = time.perf_counter()
    out = {}
    for tag, spec in specs.items():
        top1 = inherited_accuracy(supernet, spec, calibration, data, cfg.eval_batch_size)
        out[tag] = {"inherited": top1,
                    "nll": -val_loss(supernet, spec, data, cfg.eval_batch_size)}
    images = len(specs) * (sum(len(x) for x in calibration) + 2 * len(data.val))
    return out, time.perf_counter() - start, images


def read_tables(paths: list[Path]) -> pd.DataFrame | None:
    """The rows of every table CSV that exists (the first holding a (tag, seed) wins)."""
    tables = [load_table(p) for p in paths if p.exists()]
    if not tables:
        return None
    return pd.concat(tables, ignore_index=True).drop_duplicates(["tag", "seed"])


def read_records(out: Path) -> list[dict[str, Any]]:
    path = out / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_recipe(recipe: Recipe, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) the recipe's supernet and score every covered spec: its record."""
    job = job_of(recipe, args.smoke)
    path = args.cache / recipe.supernet_name
    started = time.perf_counter()
    spent = train_supernet(job, path)
    manifest = read_manifest(path)
    table = read_tables(args.table)
    specs = covered_specs(table, job.supernet, SMOKE_SLICE if args.smoke else SLICE)
    calib = job.train.calib_batches if args.smoke else recipe.calib_batches
    estimates, seconds, images = score(path, specs, calib)
    return {"recipe": recipe.name, "calib_batches": calib,
            "supernet_dir": str(path), "job": job.to_dict(), "curve": list(manifest.curve),
            "train_s": manifest.seconds, "train_mac_epochs": sum(spent),
            "score_s": seconds, "score_forward_images": images, "scored": len(estimates),
            "wall_s": time.perf_counter() - started, "smoke": args.smoke,
            "estimates": {tag: {**values, "macs": counts.macs(specs[tag], job.target.image_size)}
                          for tag, values in estimates.items()}}


# --- the report ------------------------------------------------------------------------------

def radix_family(spec: ArchSpec) -> str:
    """A spec's family: its largest radix kind (0 plain conv, 1 sigmoid gate, >= 2 softmax)."""
    top = max(stage.radix for stage in spec.stages)
    return "radix 0" if top == 0 else "radix 1" if top == 1 else "radix >= 2"


METRICS = {"inherited": "val top-1", "nll": "val loss"}  # estimates a record may hold


def joined(table: pd.DataFrame, record: Mapping[str, Any], metric: str = "inherited"
           ) -> pd.DataFrame:
    """The table's first-seed rows the record estimated, with its estimate (`metric`) as
    `inherited` and the spec's family."""
    first = table[table["seed"] == table["seed"].min()].drop_duplicates("tag")
    rows = first[first["tag"].isin(record["estimates"])].copy()
    rows["inherited"] = rows["tag"].map(lambda t: record["estimates"][t][metric])
    rows["family"] = rows["spec"].map(lambda s: radix_family(ArchSpec.from_json(s)))
    return rows.sort_values("tag").reset_index(drop=True)


def candidates(table: pd.DataFrame, records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Each (recipe, metric) the records hold, by name (`e8`, `e8 by val loss`)."""
    out = {}
    for r in records:
        held = set.intersection(*(set(e) for e in r["estimates"].values()))
        for metric in [m for m in METRICS if m in held]:
            name = r["recipe"] if metric == "inherited" else f"{r['recipe']} by {METRICS[metric]}"
            out[name] = joined(table, r, metric)
    return out


def split(tags: list[str]) -> tuple[set[str], set[str]]:
    """(tuning half, held-out half) of `tags`: a permutation by `SPLIT_SEED` of the sorted tags,
    the first half (rounded down) for tuning. The report splits every architecture the records
    estimated (the whole slice), so a row's half does not depend on which rows are trained."""
    order = sorted(tags)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(order))
    tune = {order[i] for i in perm[:len(order) // 2]}
    return tune, set(order) - tune


def tau_rho(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:  # nothing to rank
        return math.nan, math.nan
    return float(x.corr(y, method="kendall")), float(x.corr(y, method="spearman"))


def cheap_estimators(rows: pd.DataFrame) -> dict[str, pd.Series]:
    out = {"params": rows["params"], "MACs": rows["macs"]}
    epochs = int(rows["epochs"].max()) if len(rows) else 0
    for k in range(1, epochs):
        out[f"val after epoch {k}"] = rows["curve"].map(lambda c, k=k: c[k - 1])
    return out


def expected_seed_tau(spread: float, seed_std: float) -> float:
    """Kendall tau between two seeds' rankings of rows whose single-seed values spread `spread`
    (std) with per-seed noise `seed_std`, for Gaussian architecture effects and noise: the two
    seeds correlate r = 1 - noise variance / total variance, and tau = 2/pi asin r."""
    r = max(0.0, 1.0 - seed_std**2 / spread**2) if spread > 0 else 0.0
    return 2 / math.pi * math.asin(r)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def report(table: pd.DataFrame, records: list[dict[str, Any]], bins: int = 5) -> str:
    """The markdown of the module docstring's `report`."""
    if not records:
        return "no supernet records yet: run `python -m bench.supernet_ranking train`"
    lines = ["| recipe | supernet training | G MAC-epochs | train s | scored | score s |",
             "|---|---|---|---|---|---|"]
    for r in records:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(r["job"]["train"].items())
                             if k in ("epochs", "n_random", "distill", "max_batches", "shrink"))
        lines.append(f"| {r['recipe']} (calib {r['calib_batches']}) | {settings} | "
                     f"{r['train_mac_epochs'] / 1e9:.3f} | {r['train_s']:.0f} | {r['scored']} | "
                     f"{r['score_s']:.0f} |")
    rows = candidates(table, records)
    tags = sorted(set().union(*(set(j["tag"]) for j in rows.values())))
    lines += ["", f"Covered rows with a from-scratch val_top1: {len(tags)}"]
    if len(tags) < 6:
        lines.append("- too few to split and rank yet (the table's slice rows are still to come)")
        return "\n".join(lines)
    # The halves split every estimated architecture, trained yet or not, so that a tag's half
    # never changes as the table grows.
    tune, held = split(sorted(set().union(*(set(r["estimates"]) for r in records))))
    tune, held = tune & set(tags), held & set(tags)
    lines += [f"- split by SPLIT_SEED {SPLIT_SEED} (of the {len(set(tune) | set(held))} "
              f"trained among every estimated architecture): {len(tune)} for tuning the "
              f"recipe, {len(held)} held out", "", "Tuning half:", "",
              "| recipe | Kendall tau | Spearman rho | n |", "|---|---|---|---|"]
    tuned = {}
    for name, j in rows.items():
        part = j[j["tag"].isin(tune)]
        tuned[name] = tau_rho(part["inherited"], part["val_top1"])
        lines.append(f"| {name} | {_fmt(tuned[name][0])} | {_fmt(tuned[name][1])} | "
                     f"{len(part)} |")
    chosen = max(tuned, key=lambda n: -math.inf if math.isnan(tuned[n][0]) else tuned[n][0])
    held_rows = rows[chosen][rows[chosen]["tag"].isin(held)].reset_index(drop=True)
    truth = held_rows["val_top1"]
    overall = tau_rho(held_rows["inherited"], truth)
    lines += ["", f"Chosen on the tuning half: **{chosen}**. Held-out half ({len(held_rows)} "
              "rows):", "", "| estimator | Kendall tau | Spearman rho | n |", "|---|---|---|---|",
              f"| supernet ({chosen}) | {_fmt(overall[0])} | {_fmt(overall[1])} | "
              f"{len(held_rows)} |"]
    for name, j in rows.items():
        if name != chosen:
            part = j[j["tag"].isin(held)]
            tr = tau_rho(part["inherited"], part["val_top1"])
            lines.append(f"| supernet ({name}, not chosen) | {_fmt(tr[0])} | {_fmt(tr[1])} | "
                         f"{len(part)} |")
    cheap = {}
    for name, values in cheap_estimators(held_rows).items():
        cheap[name] = tau_rho(values, truth)
        lines.append(f"| {name} | {_fmt(cheap[name][0])} | {_fmt(cheap[name][1])} | "
                     f"{len(held_rows)} |")
    lines += ["", "Within each radix family (largest radix kind) and cost quintile, held out:",
              "", "| subset | n | supernet tau | MACs tau | val after epoch 2 tau |",
              "|---|---|---|---|---|"]
    groups = [(f, held_rows[held_rows["family"] == f]) for f in
              ("radix 0", "radix 1", "radix >= 2")]
    quantile = pd.qcut(held_rows["macs"].rank(method="first"), bins, labels=False) if len(
        held_rows) >= bins else pd.Series(0, index=held_rows.index)
    for q in range(int(quantile.max()) + 1):
        part = held_rows[quantile == q]
        groups.append((f"MACs quintile {q + 1} ({part['macs'].min() / 1e6:.1f}-"
                       f"{part['macs'].max() / 1e6:.1f} M)", part))
    for label, part in groups:
        rung = part["curve"].map(lambda c: c[1]) if len(part) else part["macs"]
        taus = [tau_rho(x, part["val_top1"])[0] for x in (part["inherited"], part["macs"], rung)]
        lines.append(f"| {label} | {len(part)} | {' | '.join(map(_fmt, taus))} |")
    stds, seed_taus = noise(table)
    ceilings = [tau for tau, _ in seed_taus.values()]
    best_cheap = max((v[0] for v in cheap.values() if not math.isnan(v[0])), default=math.nan)
    lines += [""]
    if len(stds):
        spread, seed_std = float(rows[chosen]["val_top1"].std()), float(stds.median())
        lines.append(f"- the covered rows' from-scratch val_top1 spreads {spread * 100:.2f} pts "
                     f"(std, {len(rows[chosen])} rows); one seed's noise is {seed_std * 100:.2f} "
                     f"pts (median std over the table's seeded architectures): the seed-to-seed "
                     f"Kendall tau to expect on these rows is about "
                     f"{expected_seed_tau(spread, seed_std):.2f}")
    if ceilings:
        ceiling = float(np.mean(ceilings))
        verdict = "met" if overall[0] >= 0.8 * ceiling else "missed"
        lines.append("- the table's seed-to-seed ceiling (mean Kendall tau of its seed pairs, "
                     "over the seeded uniform samples: "
                     f"{', '.join(f'{t:.3f}' for t in ceilings)}): {ceiling:.3f}; target 0.8 x "
                     f"= {0.8 * ceiling:.3f}: **{verdict}** (tau {_fmt(overall[0])})")
    lines.append(f"- best cheap estimator on the same rows: {_fmt(best_cheap)}; target + 0.1 = "
                 f"{_fmt(best_cheap + 0.1)}: "
                 f"**{'met' if overall[0] >= best_cheap + 0.1 else 'missed'}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.supernet_ranking",
                                description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("train", "report"))
    p.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=list(RECIPES))
    p.add_argument("--table", type=Path, nargs="+", default=[TABLE],
                   help=f"the table (default: {TABLE}); more CSVs of its form add rows, the "
                        "first holding a (tag, seed) wins")
    p.add_argument("--cache", type=Path, default=CACHE,
                   help=f"supernet checkpoint directories (default: {CACHE})")
    p.add_argument("--out", type=Path, default=OUT, help=f"records (default: {OUT})")
    p.add_argument("--smoke", action="store_true", help="8 px, 5%% of train, 2 short epochs")
    args = p.parse_args(argv)
    if args.command == "report":
        table = read_tables(args.table)
        if table is None:
            raise SystemExit(f"error: no table at {', '.join(map(str, args.table))}")
        print(report(table, read_records(args.out)))
        return 0
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    done = {r["recipe"] for r in read_records(args.out)}
    for name in args.recipes:
        if name in done:
            print(f"{name}: recorded, skipped", flush=True)
            continue
        print(f"{name}: supernet {RECIPES[name].supernet_name}", flush=True)
        record = run_recipe(RECIPES[name], args)
        with (args.out / "records.jsonl").open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        print(f"{name}: {record['train_mac_epochs'] / 1e9:.3f} G MAC-epochs, trained "
              f"{record['train_s']:.0f}s, scored {record['scored']} in {record['score_s']:.0f}s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["METRICS", "RECIPES", "Recipe", "candidates", "covered_specs", "expected_seed_tau",
           "job_of", "protocol_target", "radix_family", "read_tables", "report", "score", "split",
           "train_supernet", "training_compute", "val_loss"]

"""`python -m analysis.pareto EXP [EXP ...]`: the Pareto front of finished searches.

Prints the non-dominated completed trials (sorted along the front) with the hypervolume and its
history; `--all` adds dominated, pruned and failed trials; `--csv`/`--json` print machine-readable
rows instead; `--plot`/`--html` draw the trade-off; `--importance` ranks the architecture choices.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from analysis.front import (
    as_objectives,
    completed,
    format_point,
    hypervolume,
    hypervolume_history,
    ideal_point,
    pareto_front,
    reference_point,
    with_status,
)
from analysis.importance import param_importances
from analysis.load import configs, load
from analysis.plots import save_html, save_png
from nas.search.objectives import OBJECTIVES, Objective
from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError

TABLE_COLUMNS = ("trial_id", "tag", "accuracy", "macs", "params", "latency_ms", "epochs")
# Below this many completed trials, fANOVA importances mostly measure noise.
IMPORTANCE_MIN_TRIALS = 10


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m analysis.pareto",
                      description="The Pareto front of finished searches: table, hypervolume "
                      "(reference stated) and its history, plots, parameter importances.",
                      formatter_class=argparse.HelpFormatter)  # each help states its default
    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment directory OUT/NAME")
    p.add_argument("--objectives", default=None,
                   help=f"comma list of {', '.join(OBJECTIVES)} (default: the experiment's own)")
    p.add_argument("--all", action="store_true",
                   help="also list dominated, pruned and failed trials with their state")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true",
                     help="print CSV rows instead of a table (its columns, state, reason, spec)")
    fmt.add_argument("--json", action="store_true",
                     help="print the --csv columns as a JSON list of objects")
    p.add_argument("--plot", type=Path,
                   help="write a PNG of accuracy vs cost, matplotlib (default: none)")
    p.add_argument("--html", type=Path,
                   help="write an interactive HTML plot, plotly (default: none)")
    p.add_argument("--importance", action="store_true",
                   help=f"show Optuna parameter importances per objective (noisy below "
                        f"{IMPORTANCE_MIN_TRIALS} completed trials: a warning says so)")
    return p


def choose_objectives(text: str | None, labels: dict[str, Any]) -> tuple[Objective, ...]:
    """--objectives, else the experiments' own (which must then agree)."""
    if text is not None:
        return as_objectives(text)
    own = {name: tuple(c.objectives) for name, c in labels.items()}
    if len(set(own.values())) > 1:
        listed = "; ".join(f"{n}: {','.join(o)}" for n, o in own.items())
        raise UserError(f"the experiments optimized different objectives ({listed}); "
                        "pass --objectives to compare them on one set")
    return as_objectives(next(iter(own.values())))


def image_sizes(labels: dict[str, Any]) -> str:
    """The experiments' input sides for the plots' titles: "16 px", or "16/32 px" if they differ."""
    sizes = sorted({int(c.image_size) for c in labels.values() if c.image_size})
    return "/".join(str(s) for s in sizes) + " px" if sizes else ""


def check_output(path: Path | None, flag: str) -> None:
    """Refuse an output path that cannot be written, before computing anything."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: directory {parent} is not writable")


def table_columns(objs: Sequence[Objective], multi: bool, show_all: bool) -> list[str]:
    extra = [o.column for o in objs if o.column not in TABLE_COLUMNS]
    head = ["experiment"] if multi else []
    return head + list(TABLE_COLUMNS[:-1]) + extra + ["epochs"] + (["status"] if show_all else [])


def _number(value: Any) -> Any:
    """JSON-safe scalar: NaN -> None, numpy scalars -> Python numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def export_columns(columns: list[str]) -> list[str]:
    """The --csv and --json columns: the table's, then state, reason and spec."""
    return columns + ["state", "reason", "spec"]


def as_json(rows: pd.DataFrame, columns: list[str]) -> str:
    """The --csv columns as a JSON list of objects (the spec as an object, NaN as null)."""
    out = []
    for _, row in rows.iterrows():
        item = {c: json.loads(row[c]) if c == "spec" else _number(row[c]) for c in columns}
        out.append(item)
    return json.dumps(out, indent=2)


def as_text(rows: pd.DataFrame, columns: list[str], show_all: bool) -> str:
    if rows.empty:
        return "(no trials)" if show_all else "(no completed trials)"
    formatters = {
        "accuracy": lambda v: "-" if pd.isna(v) else f"{v:.2%}",
        "macs": lambda v: "-" if pd.isna(v) else f"{v / 1e6:.3f}M",
        "params": lambda v: "-" if pd.isna(v) else f"{v / 1e6:.3f}M",
        "latency_ms": lambda v: "-" if pd.isna(v) else f"{v:.2f}",
        "peak_memory_bytes": lambda v: "-" if pd.isna(v) else f"{v / 2**20:.1f}MiB",
    }
    return rows[columns].to_string(index=False, formatters=formatters, na_rep="-")


def summary(df: pd.DataFrame, objs: Sequence[Objective]) -> str:
    """Hypervolume per experiment (one shared, stated reference) and its history."""
    if completed(df, objs).empty:
        return "hypervolume: 0 (no completed trials)"
    ref = reference_point(df, objs)
    lines = [f"hypervolume: fraction of the box from reference ({format_point(ref)}) "
             f"to ideal ({format_point(ideal_point(objs))})"]
    history = hypervolume_history(df, objs, ref)
    for name, group in df.groupby("experiment", sort=False):
        steps = history[history["experiment"] == name]
        trail = ", ".join(f"{t} {v:.4f}" for t, v in zip(steps["trial_id"], steps["hypervolume"],
                                                          strict=True))
        lines.append(f"  {name}: {hypervolume(group, objs, ref):.4f}"
                     f"  (after each completed trial: {trail or 'none'})")
    return "\n".join(lines)


def few_completed(df: pd.DataFrame, labels: Sequence[str]) -> dict[str, int]:
    """Experiments with fewer than IMPORTANCE_MIN_TRIALS completed trials, and their counts."""
    counts = df[df["state"] == "COMPLETE"].groupby("experiment").size()
    done = {label: int(counts.get(label, 0)) for label in labels}
    return {label: n for label, n in done.items() if n < IMPORTANCE_MIN_TRIALS}


def importance_text(paths: Sequence[str], labels: Sequence[str],
                    objs: Sequence[Objective]) -> str:
    lines = []
    for path, label in zip(paths, labels, strict=True):
        table = param_importances(path, objs)
        for objective, group in table.groupby("objective", sort=False):
            if group["importance"].isna().all():
                lines.append(f"parameter importance for {objective} ({label}): every completed "
                             f"trial has the same {objective}, so no choice explains it")
                continue
            lines.append(f"parameter importance for {objective} ({label}, Optuna fANOVA):")
            lines.extend(f"  {row.param:<20} {row.importance:.3f}" for row in group.itertuples())
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.importance and (args.csv or args.json):
        raise UserError("--importance prints tables; use it without --csv/--json "
                        "(or call analysis.param_importances)")
    check_output(args.plot, "--plot")
    check_output(args.html, "--html")
    labels = configs(args.experiments)
    objs = choose_objectives(args.objectives, labels)
    df = load(args.experiments)
    rows = with_status(df, objs) if args.all else pareto_front(df, objs)
    columns = table_columns(objs, len(labels) > 1, args.all)
    if args.json:
        print(as_json(rows, export_columns(columns)))
    elif args.csv:
        rows[export_columns(columns)].to_csv(sys.stdout, index=False)
    else:
        print(as_text(rows, columns, args.all))
        print()
        print(summary(df, objs))
    if args.importance:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per scratch study
        text = importance_text(args.experiments, list(labels), objs)  # errors come first
        for label, done in few_completed(df, labels).items():
            print(f"warning: {label} has only {done} completed trials: parameter importances "
                  f"from fewer than {IMPORTANCE_MIN_TRIALS} are mostly noise", file=sys.stderr)
        print()
        print(text)
    if args.plot:
        save_png(df, objs, args.plot, image_size=image_sizes(labels))
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.html:
        save_html(df, objs, args.html, image_size=image_sizes(labels))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())

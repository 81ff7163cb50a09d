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


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m analysis.pareto",
                      description="The Pareto front of finished searches: table, hypervolume "
                      "(reference stated) and its history, plots, parameter importances.")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="experiment directory OUT/NAME")
    p.add_argument("--objectives", default=None,
                   help=f"comma list of {', '.join(OBJECTIVES)} (default: the experiment's own)")
    p.add_argument("--all", action="store_true",
                   help="also list dominated, pruned and failed trials with their state")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print CSV rows instead of a table")
    fmt.add_argument("--json", action="store_true",
                     help="print a JSON list of {trial_id, tag, spec, <objective>...}")
    p.add_argument("--plot", type=Path, help="write a PNG of accuracy vs cost (matplotlib)")
    p.add_argument("--html", type=Path, help="write an interactive HTML plot (plotly)")
    p.add_argument("--importance", action="store_true",
                   help="show Optuna parameter importances per objective")
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


def as_json(rows: pd.DataFrame, objs: Sequence[Objective], show_all: bool) -> str:
    out = []
    for _, row in rows.iterrows():
        item: dict[str, Any] = {"experiment": row["experiment"], "trial_id": row["trial_id"],
                                "tag": row["tag"], "spec": json.loads(row["spec"])}
        item.update({o.name: _number(row[o.column]) for o in objs})
        item.update({"epochs": int(row["epochs"]), "state": row["state"]})
        if show_all:
            item.update({"status": row["status"], "reason": row["reason"]})
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


def importance_text(paths: Sequence[str], labels: Sequence[str],
                    objs: Sequence[Objective]) -> str:
    lines = []
    for path, label in zip(paths, labels, strict=True):
        table = param_importances(path, objs)
        for objective, group in table.groupby("objective", sort=False):
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
        print(as_json(rows, objs, args.all))
    elif args.csv:
        rows[columns + ["state", "reason", "spec"]].to_csv(sys.stdout, index=False)
    else:
        print(as_text(rows, columns, args.all))
        print()
        print(summary(df, objs))
    if args.importance:
        print()
        print(importance_text(args.experiments, list(labels), objs))
    if args.plot:
        save_png(df, objs, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.html:
        save_html(df, objs, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Experiments as pandas tables: one row per trial, the spec flattened into columns.

Reads only `trials.csv` and `experiment.json` (the search's contract with everything after it), so
analysis works on a copied or archived experiment without Ray or the study database.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nas.experiment import (
    COST_KEYS,
    CSV_COLUMNS,
    ExperimentConfig,
    ExperimentDir,
    TrialRecord,
    is_experiment,
    load_config,
    read_trials_csv,
)
from search_spaces.errors import UserError
from search_spaces.registry import list_named_points, named_point
from search_spaces.spec import ArchSpec

# Global spec fields copied as they are; per-stage fields become s<N>_<field> columns.
SPEC_FIELDS = ("stem", "stem_width", "base_planes", "avg_down", "avd", "avd_first",
               "attn_reduction", "attn_min_width", "dropout", "num_classes", "in_channels",
               "input_regime")
STAGE_FIELDS = ("depth", "radix", "cardinality", "width")
ExpPath = str | Path


def flatten_spec(spec: ArchSpec) -> dict[str, Any]:
    """`stem`, ..., `n_stages`, `s1_depth`, `s1_radix`, ...: one scalar column per choice."""
    out: dict[str, Any] = {name: getattr(spec, name) for name in SPEC_FIELDS}
    out["n_stages"] = len(spec.stages)
    for i, stage in enumerate(spec.stages):
        for name in STAGE_FIELDS:
            out[f"s{i + 1}_{name}"] = getattr(stage, name)
    return out


def seed_point_name(spec: ArchSpec, names: Sequence[str]) -> str:
    """The named point `spec` was seeded from (retargeted to the task as the search does), or ''."""
    for name in names:
        if name not in list_named_points():
            continue
        point = named_point(name).replace(num_classes=spec.num_classes,
                                          in_channels=spec.in_channels,
                                          input_regime=spec.input_regime)
        if point == spec:
            return name
    return ""


def open_experiment(path: ExpPath) -> tuple[Path, ExperimentConfig]:
    """The experiment directory and its config; a clear UserError for anything else."""
    exp = Path(path)
    if not exp.exists():
        raise UserError(f"{exp} does not exist (expected an experiment directory OUT/NAME)")
    if not is_experiment(exp):
        raise UserError(f"{exp} is not an experiment: no {ExperimentDir(exp).config.name} in it")
    return exp, load_config(exp)


def _row(record: TrialRecord, label: str, exp: Path, seeds: Sequence[str]) -> dict[str, Any]:
    row = record.to_row()
    row["curve"] = [dict(e) for e in record.curve]
    row.update(flatten_spec(record.spec))
    row["seed_point"] = seed_point_name(record.spec, seeds)
    row["experiment"] = label
    row["experiment_path"] = str(exp)
    return row


def _labels(paths: Sequence[Path]) -> list[str]:
    """Directory names, or full paths where two experiments share a name."""
    names = [p.name for p in paths]
    return [p.name if names.count(p.name) == 1 else str(p) for p in paths]


def load(experiments: ExpPath | Sequence[ExpPath]) -> pd.DataFrame:
    """One row per trial of one or several experiments (`experiment` column tells them apart).

    Columns: the trials.csv columns (`curve` as a list of per-epoch dicts), the flattened spec
    (see `flatten_spec`), `seed_point` (named point name or '') and `experiment`/`experiment_path`.
    """
    paths = [experiments] if isinstance(experiments, (str, Path)) else list(experiments)
    if not paths:
        raise UserError("no experiment given")
    opened = [open_experiment(p) for p in paths]
    rows: list[dict[str, Any]] = []
    for (exp, config), label in zip(opened, _labels([e for e, _ in opened]), strict=True):
        try:
            records = read_trials_csv(exp)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{ExperimentDir(exp).trials_csv} is malformed: {err}") from None
        rows.extend(_row(r, label, exp, config.seed_points) for r in records)
    columns = [*CSV_COLUMNS, "seed_point", "experiment", "experiment_path"]
    df = pd.DataFrame(rows, columns=None if rows else columns)
    for name in (*COST_KEYS, "accuracy", "best_accuracy", "seconds"):
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    return df.reset_index(drop=True)


def configs(experiments: ExpPath | Sequence[ExpPath]) -> dict[str, ExperimentConfig]:
    """Each experiment's config keyed by the same label `load` puts in the `experiment` column."""
    paths = [experiments] if isinstance(experiments, (str, Path)) else list(experiments)
    opened = [open_experiment(p) for p in paths]
    return {label: config for (_, config), label
            in zip(opened, _labels([e for e, _ in opened]), strict=True)}

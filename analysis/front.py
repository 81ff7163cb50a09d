"""Pareto fronts of loaded trials: membership, order along the front, knee, hypervolume.

Fronts are computed per experiment (so several runs can be compared side by side) over COMPLETE
trials only: a pruned trial's accuracy is a partial-training number and must not dominate anything.
Dominance and hypervolume come from `nas.search.pareto` (Optuna's implementations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from nas.search.objectives import OBJECTIVES, Objective, parse_objectives
from nas.search.pareto import hypervolume as raw_hypervolume
from nas.search.pareto import nondomination_rank
from search_spaces.errors import UserError

ObjectivesLike = str | Sequence[str] | Sequence[Objective]
# Headroom of the default reference point over the worst cost seen, so the costliest front
# member still adds volume.
REFERENCE_MARGIN = 1.1


def as_objectives(objectives: ObjectivesLike) -> tuple[Objective, ...]:
    """Names (`"accuracy,macs"`, a list) or Objective objects -> validated objectives."""
    if not isinstance(objectives, str) and all(isinstance(o, Objective) for o in objectives):
        return tuple(objectives)  # type: ignore[arg-type]
    return parse_objectives(objectives)  # type: ignore[arg-type]


def completed(df: pd.DataFrame, objectives: ObjectivesLike) -> pd.DataFrame:
    """COMPLETE trials with a value for every objective; an objective nobody measured is an
    error."""
    objs = as_objectives(objectives)
    done = df[df["state"] == "COMPLETE"]
    for o in objs:
        if len(done) and done[o.column].isna().all():
            measured = [n for n, m in OBJECTIVES.items() if done[m.column].notna().any()]
            raise UserError(
                f"objective {o.name} has no values (column {o.column}) in the completed trials; "
                f"objectives with values: {', '.join(measured)}"
            )
    mask = done[[o.column for o in objs]].notna().all(axis=1)
    return done[mask]


def _values(df: pd.DataFrame, objs: Sequence[Objective]) -> np.ndarray:
    return df[[o.column for o in objs]].to_numpy(dtype=float)


def _maximize(objs: Sequence[Objective]) -> list[bool]:
    return [o.maximize for o in objs]


def sort_along_front(df: pd.DataFrame, objectives: ObjectivesLike) -> pd.DataFrame:
    """Cheapest first: by each cost objective in the given order, then by accuracy descending;
    experiments stay in the order they were given.

    With one cost (the usual accuracy-vs-cost search) this walks the front from the cheapest, least
    accurate member to the most accurate one."""
    objs = as_objectives(objectives)
    costs = [o.column for o in objs if not o.maximize]
    gains = [o.column for o in objs if o.maximize]
    ordered = df.sort_values(costs + gains + ["number"],
                             ascending=[True] * len(costs) + [False] * len(gains) + [True],
                             kind="stable")
    if "experiment" not in df.columns:
        return ordered
    first_seen = {name: i for i, name in enumerate(pd.unique(df["experiment"]))}
    return ordered.sort_values("experiment", key=lambda s: s.map(first_seen), kind="stable")


def front_ranks(df: pd.DataFrame, objectives: ObjectivesLike) -> pd.Series:
    """Non-domination rank (0 = on the front) of each completed trial within its experiment;
    NaN for trials that are not COMPLETE."""
    objs = as_objectives(objectives)
    done = completed(df, objs)
    ranks = pd.Series(np.nan, index=df.index)
    groups = done.groupby("experiment", sort=False) if "experiment" in done else [(None, done)]
    for _, group in groups:
        ranks[group.index] = nondomination_rank(_values(group, objs), _maximize(objs))
    return ranks


def pareto_front(df: pd.DataFrame, objectives: ObjectivesLike) -> pd.DataFrame:
    """The non-dominated COMPLETE trials of each experiment, sorted along the front."""
    ranks = front_ranks(df, objectives)
    return sort_along_front(df[ranks == 0], objectives)


def with_status(df: pd.DataFrame, objectives: ObjectivesLike) -> pd.DataFrame:
    """All trials plus `status` (front, dominated, or the state of unfinished ones), ordered front
    first (along the front), then dominated by rank, then the rest by trial number."""
    ranks = front_ranks(df, objectives)
    out = df.assign(front_rank=ranks)
    out["status"] = np.where(ranks == 0, "front",
                             np.where(ranks > 0, "dominated", out["state"]))
    order = {"front": 0, "dominated": 1}
    front = sort_along_front(out[out["status"] == "front"], objectives)
    dominated = sort_along_front(out[out["status"] == "dominated"], objectives)
    dominated = dominated.sort_values("front_rank", kind="stable")
    rest = out[~out["status"].isin(order)].sort_values("number", kind="stable")
    return pd.concat([front, dominated, rest])


def reference_point(df: pd.DataFrame, objectives: ObjectivesLike) -> dict[str, float]:
    """Default hypervolume reference: accuracy 0 (worst possible) and each cost at 1.1x the
    largest value among all completed trials given (so comparisons share one reference)."""
    objs = as_objectives(objectives)
    done = completed(df, objs)
    ref: dict[str, float] = {}
    for o in objs:
        if o.maximize:
            ref[o.name] = 0.0
        else:
            worst = float(done[o.column].max()) if len(done) else 1.0
            ref[o.name] = worst * REFERENCE_MARGIN if worst > 0 else 1.0
    return ref


def format_point(point: Mapping[str, float]) -> str:
    """`accuracy=0, macs=5.56e+07`: how a reference point is stated to users."""
    return ", ".join(f"{name}={value:.4g}" for name, value in point.items())


def ideal_point(objectives: ObjectivesLike) -> dict[str, float]:
    """Best conceivable values: accuracy 1, every cost 0 (the far corner of the hypervolume box)."""
    return {o.name: 1.0 if o.maximize else 0.0 for o in as_objectives(objectives)}


def hypervolume(df: pd.DataFrame, objectives: ObjectivesLike,
                reference: Mapping[str, float] | None = None) -> float:
    """Fraction of the box between `reference` and the ideal point that the completed trials
    dominate (in [0, 1]; higher is better). Pass one `reference` to compare experiments."""
    objs = as_objectives(objectives)
    ref = dict(reference) if reference is not None else reference_point(df, objs)
    done = completed(df, objs)
    ideal = ideal_point(objs)
    box = float(np.prod([abs(ideal[o.name] - ref[o.name]) for o in objs]))
    volume = raw_hypervolume(_values(done, objs), _maximize(objs), [ref[o.name] for o in objs])
    return volume / box if box > 0 else 0.0


def hypervolume_history(df: pd.DataFrame, objectives: ObjectivesLike,
                        reference: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Hypervolume after each completed trial, in trial order, per experiment.

    Columns: experiment, number, trial_id, hypervolume (non-decreasing within an experiment)."""
    objs = as_objectives(objectives)
    ref = dict(reference) if reference is not None else reference_point(df, objs)
    done = completed(df, objs).sort_values("number", kind="stable")
    rows = []
    groups = done.groupby("experiment", sort=False) if "experiment" in done else [("", done)]
    for name, group in groups:
        for i in range(len(group)):
            rows.append({"experiment": name, "number": int(group["number"].iloc[i]),
                         "trial_id": group["trial_id"].iloc[i],
                         "hypervolume": hypervolume(group.iloc[: i + 1], objs, ref)})
    return pd.DataFrame(rows, columns=["experiment", "number", "trial_id", "hypervolume"])


def knee(front: pd.DataFrame, objectives: ObjectivesLike) -> int:
    """Index label of the front's knee.

    Each objective is turned into a loss and min-max normalized over the front; the knee is the
    member farthest from the straight line joining the front's two extremes (its first and last
    member along the front), counted positive on the side of the ideal point. With fewer than
    three members, or ties, the most accurate member wins."""
    objs = as_objectives(objectives)
    if front.empty:
        raise UserError("the front is empty: no knee to pick")
    ordered = sort_along_front(front, objs)
    loss = _values(ordered, objs) * np.where(_maximize(objs), -1.0, 1.0)
    span = loss.max(axis=0) - loss.min(axis=0)
    norm = (loss - loss.min(axis=0)) / np.where(span > 0, span, 1.0)
    start, end = norm[0], norm[-1]
    direction = end - start
    length = float(np.linalg.norm(direction))
    signed = np.zeros(len(ordered))
    if len(ordered) >= 3 and length > 0:
        u = direction / length
        rel = norm - start
        offsets = rel - np.outer(rel @ u, u)  # perpendicular offsets from the line
        ideal = -start - (-start @ u) * u  # the ideal corner (all zeros) relative to the line
        side = np.where(offsets @ ideal < 0, -1.0, 1.0)
        signed = np.linalg.norm(offsets, axis=1) * side
    accuracy = ordered["accuracy"].to_numpy(dtype=float)
    best = np.lexsort((-accuracy, -np.round(signed, 12)))[0]
    return ordered.index[best]

"""Accuracy-versus-cost pictures of one or several experiments.

PNG (matplotlib): every trial faded, each experiment's front as a step line with its members'
trial ids, accuracy in percent, the cost axis on a log scale (costs of searched networks span
orders of magnitude) with labelled ticks across the data, named seed points labelled, and the
hypervolume history beside it on its full range (0 at the reference, 1 at the ideal point).
HTML (plotly): the same scatter, where hovering a point shows its spec and learning curve. With
more than two objectives the plots show accuracy against the first cost; the step line is then
the front of that pair.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from matplotlib.ticker import EngFormatter, FixedLocator, NullFormatter, PercentFormatter

from analysis.front import (
    ObjectivesLike,
    as_objectives,
    completed,
    format_point,
    hypervolume_history,
    pareto_front,
    reference_point,
)
from nas.search.objectives import Objective

LABELS = {"accuracy": "validation top-1", "macs": "MACs per image", "params": "parameters",
          "latency": "latency (ms, batch 1)", "memory": "peak memory (bytes)"}
STATE_MARKERS = {"COMPLETE": "o", "PRUNED": "x", "FAIL": "v", "RUNNING": "."}


def plot_axes(objectives: ObjectivesLike) -> tuple[Objective, Objective]:
    """(cost on x, accuracy on y): the first cost objective against accuracy."""
    objs = as_objectives(objectives)
    cost = next((o for o in objs if not o.maximize), None)
    if cost is None:
        cost = as_objectives("accuracy,macs")[1]
    return cost, next(o for o in objs if o.maximize)


def _plotted(df: pd.DataFrame, x: Objective, y: Objective) -> pd.DataFrame:
    return df[df[x.column].notna() & df[y.column].notna()]


def cost_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` ticks spread evenly over [low, high] on a log axis, rounded to the fewest
    significant digits that keep them apart: a log axis alone labels only powers of ten, often
    none within a search's costs."""
    if not 0 < low <= high:
        return []
    values = np.geomspace(low, high, count) if high > low else np.array([low])
    for digits in range(2, 6):
        ticks = sorted({float(f"{v:.{digits}g}") for v in values})
        if len(ticks) == len(values):
            break
    return ticks


def _title(y: Objective, x: Objective, image_size: str) -> str:
    return f"{y.name} vs {x.name}" + (f" ({image_size} inputs)" if image_size else "")


def _label_cost_axis(ax: Axes, values: pd.Series) -> None:
    ticks = cost_ticks(float(values.min()), float(values.max())) if len(values) else []
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())


def front_figure(df: pd.DataFrame, objectives: ObjectivesLike,
                 reference: Mapping[str, float] | None = None, image_size: str = "") -> Figure:
    """Scatter of all trials (faded; pruned trials at their partial accuracy as crosses), the
    front of each experiment as a step line with trial ids, seed points labelled; hypervolume
    history at right. `image_size` (e.g. "16 px") goes into the title: costs depend on it."""
    x, y = plot_axes(objectives)
    fig = Figure(figsize=(12, 5), layout="constrained")
    ax, hv_ax = fig.subplots(1, 2, width_ratios=(2, 1))
    ref = dict(reference) if reference is not None else reference_point(df, objectives)
    history = hypervolume_history(df, objectives, ref)
    for i, (name, group) in enumerate(df.groupby("experiment", sort=False)):
        color = f"C{i}"
        shown = _plotted(group, x, y)
        for state, marker in STATE_MARKERS.items():
            part = shown[shown["state"] == state]
            if len(part):
                ax.scatter(part[x.column], part[y.column], color=color, marker=marker, alpha=0.3,
                           label=f"{name}: {state.lower()}")
        front = pareto_front(completed(group, [y, x]), [y, x])
        ax.step(front[x.column], front[y.column], where="post", color=color, linewidth=2,
                marker="o", label=f"{name}: front ({len(front)})")
        for _, row in front.iterrows():
            ax.annotate(row["trial_id"], (row[x.column], row[y.column]), xytext=(4, -10),
                        textcoords="offset points", fontsize=7, color=color)
        for _, row in shown[shown["seed_point"] != ""].iterrows():
            ax.annotate(row["seed_point"], (row[x.column], row[y.column]), xytext=(4, 4),
                        textcoords="offset points", fontsize=8, color=color)
        hv = history[history["experiment"] == name]
        hv_ax.step(hv["number"], hv["hypervolume"], where="post", color=color, marker=".",
                   label=name)
    ax.set_xscale("log")
    _label_cost_axis(ax, _plotted(df, x, y)[x.column])
    ax.set_xlabel(LABELS.get(x.name, x.name) + " (log)")
    ax.set_ylabel(LABELS.get(y.name, y.name) + (" (%)" if y.name == "accuracy" else ""))
    if y.name == "accuracy":
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(_title(y, x, image_size))
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    hv_ax.set_xlabel("trial number")
    hv_ax.set_ylabel("hypervolume (fraction of box)")
    hv_ax.set_ylim(0.0, 1.0)  # the whole box: a small gain looks small
    hv_ax.set_title("hypervolume over trials\nreference " + format_point(ref), fontsize=10)
    hv_ax.grid(True, alpha=0.3)
    return fig


def save_png(df: pd.DataFrame, objectives: ObjectivesLike, path: str | Path,
             reference: Mapping[str, float] | None = None, image_size: str = "") -> Path:
    front_figure(df, objectives, reference, image_size).savefig(path, dpi=120)
    return Path(path)


def spec_lines(spec_json: str) -> list[str]:
    """Every spec field, compactly: two lines of global choices, then one line per stage."""
    spec = json.loads(spec_json)
    stages = spec.pop("stages")
    fields = [f"{k}={v}" for k, v in sorted(spec.items())]
    half = (len(fields) + 1) // 2
    return [" ".join(fields[:half]), " ".join(fields[half:])] + [
        f"s{i + 1}: depth {s['depth']}, radix {s['radix']}, cardinality {s['cardinality']}, "
        f"width {s['width']}" for i, s in enumerate(stages)]


def _hover(row: pd.Series) -> str:
    """Tag, id, state, learning curve and spec, as plotly hover HTML."""
    curve = "<br>".join(
        f"epoch {e.get('epoch')}: val_top1 {e.get('val_top1', float('nan')):.4f}, "
        f"train_loss {e.get('train_loss', float('nan')):.4f}" for e in row["curve"]
    )
    seed = f" (seed point {row['seed_point']})" if row["seed_point"] else ""
    return (f"<b>{row['trial_id']}</b> {row['tag']}{seed} [{row['state']}]<br>"
            f"<b>curve</b><br>{curve or 'none'}<br><b>spec</b><br>"
            + "<br>".join(spec_lines(row["spec"])))


def front_html(df: pd.DataFrame, objectives: ObjectivesLike, image_size: str = "") -> go.Figure:
    """Interactive scatter: faded trials, front step lines with trial ids, accuracy in percent;
    hover shows spec and curve."""
    x, y = plot_axes(objectives)
    fig = go.Figure()
    for name, group in df.groupby("experiment", sort=False):
        shown = _plotted(group, x, y)
        fig.add_trace(go.Scatter(
            x=shown[x.column], y=shown[y.column], mode="markers+text", name=f"{name}: trials",
            opacity=0.5, text=shown["seed_point"], textposition="top right",
            hovertext=[_hover(r) for _, r in shown.iterrows()], hoverinfo="text",
            marker={"symbol": [{"PRUNED": "x", "FAIL": "triangle-down"}.get(s, "circle")
                               for s in shown["state"]]},
        ))
        front = pareto_front(completed(group, [y, x]), [y, x])
        fig.add_trace(go.Scatter(
            x=front[x.column], y=front[y.column], mode="lines+markers+text", line_shape="hv",
            name=f"{name}: front", text=front["trial_id"], textposition="bottom right",
            hovertext=[_hover(r) for _, r in front.iterrows()], hoverinfo="text",
        ))
    percent = y.name == "accuracy"
    fig.update_layout(xaxis_title=LABELS.get(x.name, x.name),
                      yaxis_title=LABELS.get(y.name, y.name) + (" (%)" if percent else ""),
                      xaxis_type="log", yaxis_tickformat=".0%" if percent else None,
                      title=_title(y, x, image_size), hoverlabel={"align": "left"})
    return fig


def save_html(df: pd.DataFrame, objectives: ObjectivesLike, path: str | Path,
              image_size: str = "") -> Path:
    """Self-contained HTML (plotly.js embedded: opens offline)."""
    front_html(df, objectives, image_size).write_html(str(path), include_plotlyjs=True)
    return Path(path)

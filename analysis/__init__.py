"""Pareto fronts, tables, plots and importances from finished searches.

`load` reads experiments into a DataFrame; `analysis.front` computes fronts, hypervolume and the
knee; `param_importances` asks Optuna which choices mattered; `analysis.plots` draws PNG/HTML
(imported on demand: matplotlib and plotly are only needed for pictures).
"""

from analysis.front import (
    hypervolume,
    hypervolume_history,
    knee,
    pareto_front,
    reference_point,
    sort_along_front,
    with_status,
)
from analysis.importance import param_importances
from analysis.load import flatten_spec, load

__all__ = [
    "flatten_spec", "hypervolume", "hypervolume_history", "knee", "load", "param_importances",
    "pareto_front", "reference_point", "sort_along_front", "with_status",
]

"""MO-ASHA-style pruning as an Optuna `BasePruner`.

Pruning a multi-objective search by accuracy rank alone kills cheap models that learn slowly and
erases the cheap end of the front. At each rung this pruner ranks every trial that reached the rung
by non-dominated sorting over (accuracy at the rung, the trial's static costs) and keeps the best
1/eta, as MO-ASHA (Schmucker et al., 2021) does.

Optuna refuses `Trial.report` in multi-objective studies (and its TPE sampler breaks on pruned
multi-objective trials that carry intermediate values), so there the search stores intermediate
accuracies as the user attribute `INTERMEDIATE_ATTR`; single-objective studies use Optuna's own
intermediate values. This pruner reads either, plus the static costs stored as user attributes.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from nas.pareto import top_k_with_ties

INTERMEDIATE_ATTR = "intermediate_accuracy"


def intermediate_values(trial: FrozenTrial) -> dict[int, float]:
    """Accuracy per epoch, from Optuna's intermediate values or the multi-objective attribute."""
    if trial.intermediate_values:
        return dict(trial.intermediate_values)
    return {int(k): float(v) for k, v in trial.user_attrs.get(INTERMEDIATE_ATTR, {}).items()}


class ParetoPruner(BasePruner):
    """Asynchronous successive halving that promotes by Pareto rank.

    Args:
        cost_attrs: user-attribute names of the static costs (minimized) ranked with accuracy;
            empty makes this plain accuracy-ranked ASHA.
        min_resource: epochs before the first rung.
        reduction_factor: eta; the top 1/eta of each rung continue.
    """

    def __init__(
        self,
        cost_attrs: Sequence[str] = ("macs",),
        min_resource: int = 1,
        reduction_factor: int = 3,
    ) -> None:
        if min_resource < 1:
            raise ValueError(f"min_resource must be >= 1, got {min_resource}")
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {reduction_factor}")
        self.cost_attrs = tuple(cost_attrs)
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        # storage -> study id -> trial number -> rung data of finished trials
        self._cache: weakref.WeakKeyDictionary[Any, dict[int, dict[int, _Row]]] = (
            weakref.WeakKeyDictionary())

    def is_rung(self, step: int) -> bool:
        rung = self.min_resource
        while rung < step:
            rung *= self.reduction_factor
        return rung == step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        own = intermediate_values(trial)
        step = max(own, default=None)
        if step is None or not self.is_rung(step):
            return False
        finished = self._finished_rows(study)
        accuracies: list[float] = []
        costs_of: list[tuple[float, ...]] = []
        index = None
        for t in study.get_trials(deepcopy=False):
            number = t.number
            if number == trial.number:  # as passed in (it may be newer than the study's copy)
                if trial.state not in _PEER_STATES:
                    continue
                curve, costs = own, self._costs(trial)
            else:
                row = finished.get(number)
                if row is None:
                    if t.state not in _PEER_STATES:
                        continue
                    row = (intermediate_values(t), self._costs(t))
                    if t.state != TrialState.RUNNING:
                        finished[number] = row  # a finished trial's values no longer change
                curve, costs = row
            if step in curve and costs is not None:
                if number == trial.number:
                    index = len(accuracies)
                accuracies.append(curve[step])
                costs_of.append(costs)
        if index is None:
            return False  # Missing costs: no basis to rank it; let it run.
        values = np.column_stack([np.array(accuracies, dtype=float),
                                  np.array(costs_of, dtype=float).reshape(len(accuracies), -1)])
        values[~np.isfinite(values[:, 0]), 0] = -np.inf
        keep = max(1, len(accuracies) // self.reduction_factor)
        promoted = top_k_with_ties(values, [True] + [False] * len(self.cost_attrs), keep)
        return not promoted[index]

    def _costs(self, trial: FrozenTrial) -> tuple[float, ...] | None:
        costs = tuple(trial.user_attrs.get(a) for a in self.cost_attrs)
        return None if None in costs else costs

    def _finished_rows(self, study: optuna.Study) -> dict[int, _Row]:
        """Rung data of the study's finished trials, read once each: without it every decision
        re-read every past trial's attributes, a per-decision cost that grew with the search.
        Keyed by the storage held weakly: a pruner outlives the studies it served (tests,
        notebooks), and a dead storage's id may be reused by a new one."""
        return self._cache.setdefault(study._storage, {}).setdefault(study._study_id, {})

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _cache=weakref.WeakKeyDictionary())


_Row = tuple[dict[int, float], tuple[float, ...] | None]
_PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)

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

from nas.search.pareto import top_k_with_ties

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
        # study -> rung data of its trials
        self._cache: weakref.WeakKeyDictionary[optuna.Study, _Rungs] = weakref.WeakKeyDictionary()

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
        costs = self._costs(trial) if trial.state in _PEER_STATES else None
        if costs is None:
            return False  # Missing costs: no basis to rank it; let it run.
        # The rung's peers: finished ones from the cache, running ones (their values still
        # change) read afresh, and the deciding trial as passed in (it may be newer than the
        # study's copy); ranked in trial-number order, as ties and crowding depend on order.
        numbers, accuracies, costs_of = self._state(study).peers(study, step, self, trial.number)
        numbers.append(trial.number)
        accuracies.append(own[step])
        costs_of.append(costs)
        order = np.argsort(np.array(numbers), kind="stable")
        index = int(np.flatnonzero(order == len(numbers) - 1)[0])
        values = np.column_stack([np.array(accuracies, dtype=float),
                                  np.array(costs_of, dtype=float).reshape(len(accuracies), -1)])
        values = values[order]
        values[~np.isfinite(values[:, 0]), 0] = -np.inf
        keep = max(1, len(accuracies) // self.reduction_factor)
        promoted = top_k_with_ties(values, [True] + [False] * len(self.cost_attrs), keep)
        return not promoted[index]

    def _costs(self, trial: FrozenTrial) -> tuple[float, ...] | None:
        costs = tuple(trial.user_attrs.get(a) for a in self.cost_attrs)
        return None if None in costs else costs

    def _state(self, study: optuna.Study) -> _Rungs:
        """The study's rung data, kept between decisions so none re-reads every past trial.
        Keyed by the study object held weakly: a pruner outlives the studies it served (tests,
        notebooks), and a dead study's id may be reused by a new one."""
        return self._cache.setdefault(study, _Rungs())

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _cache=weakref.WeakKeyDictionary())


_PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class _Rungs:
    """What a study's trials contribute to each rung. A finished trial is read once, when a
    decision first sees it finished, and filed under every rung it reached; later decisions
    look only at trials that were unfinished (running or waiting) or new since the last one, so
    a decision's Python work follows the trials in flight, not the length of the search."""

    def __init__(self) -> None:
        self.seen = 0  # trials numbered below this have been looked at
        self.open: set[int] = set()  # ... and of those, these were not finished yet
        self.rungs: dict[int, tuple[list[int], list[float], list[tuple[float, ...]]]] = {}

    def peers(self, study: optuna.Study, step: int, pruner: ParetoPruner,
              exclude: int) -> tuple[list[int], list[float], list[tuple[float, ...]]]:
        """(numbers, accuracies at `step`, costs) of the rung's peers other than `exclude`."""
        trials = study.get_trials(deepcopy=False)
        if any(t.number != i for i, t in enumerate(trials[self.seen:], self.seen)):
            raise RuntimeError("ParetoPruner expects a study's trials in number order")
        self.open.update(range(self.seen, len(trials)))
        self.seen = len(trials)
        numbers, accuracies, costs_of = (list(x) for x in self.rungs.get(step, ([], [], [])))
        for number in sorted(self.open):
            t = trials[number]
            if t.state.is_finished():
                self.open.discard(number)
                if t.state in _PEER_STATES and (costs := pruner._costs(t)) is not None:
                    for rung, accuracy in intermediate_values(t).items():
                        if not pruner.is_rung(rung):
                            continue
                        filed = self.rungs.setdefault(rung, ([], [], []))
                        filed[0].append(number)
                        filed[1].append(accuracy)
                        filed[2].append(costs)
                        if rung == step and number != exclude:
                            numbers.append(number)
                            accuracies.append(accuracy)
                            costs_of.append(costs)
            elif t.state == TrialState.RUNNING and number != exclude:
                curve = intermediate_values(t)
                if step in curve and (costs := pruner._costs(t)) is not None:
                    numbers.append(number)
                    accuracies.append(curve[step])
                    costs_of.append(costs)
        if exclude in self.rungs.get(step, ((),))[0]:  # finished, yet deciding again: as passed
            keep = [i for i, n in enumerate(numbers) if n != exclude]
            numbers = [numbers[i] for i in keep]
            accuracies = [accuracies[i] for i in keep]
            costs_of = [costs_of[i] for i in keep]
        return numbers, accuracies, costs_of

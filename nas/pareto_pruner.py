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

from collections.abc import Sequence

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
        peers = []
        for t in study.get_trials(deepcopy=False):
            curve = own if t.number == trial.number else intermediate_values(t)
            if (step in curve
                    and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                    and all(a in t.user_attrs for a in self.cost_attrs)):
                peers.append((t, curve[step]))
        if trial.number not in {t.number for t, _ in peers}:
            return False  # Missing costs: no basis to rank it; let it run.
        values = np.array(
            [[accuracy, *(t.user_attrs[a] for a in self.cost_attrs)] for t, accuracy in peers],
            dtype=float,
        )
        values[~np.isfinite(values[:, 0]), 0] = -np.inf
        keep = max(1, len(peers) // self.reduction_factor)
        promoted = top_k_with_ties(values, [True] + [False] * len(self.cost_attrs), keep)
        index = next(i for i, (t, _) in enumerate(peers) if t.number == trial.number)
        return not promoted[index]

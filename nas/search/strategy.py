"""Search strategies: an Optuna sampler plus arguments, and the pruner, chosen by name."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import optuna

from nas.search.objectives import Objective
from nas.search.pruner import ParetoPruner
from search_spaces.errors import UserError
from trials.training import TrainConfig

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "qmc")
PRUNERS = ("pareto", "median", "sha", "hyperband", "none")
# Pruner eta: the top 1/eta of each rung continue. 2 rather than ASHA's usual 3, which stops so
# many trials at the first rung that few networks finish (see docs/benchmarks.md).
DEFAULT_REDUCTION_FACTOR = 2
# The first rung is the first epoch after the learning-rate warm-up: at the warm-up's end the
# accuracies still rank networks little better than chance (docs/benchmarks.md).
DEFAULT_FIRST_RUNG = math.ceil(TrainConfig.warmup_epochs) + 1
# Where the search stores each trial's constraint violations (<= 0 means satisfied).
VIOLATIONS_ATTR = "constraint_violations"


def record_violations(trial: optuna.Trial, violations: Sequence[float], constrained: bool) -> None:
    """Store a trial's violations (<= 0 satisfied) where `analysis` reads them (a user attribute)
    and, in a constrained search, as the trial's own constraints, where Optuna's samplers read
    them. Set when the trial is proposed, from static costs (Optuna 5 deprecates the samplers'
    `constraints_func`)."""
    trial.set_user_attr(VIOLATIONS_ATTR, list(violations))
    if constrained:
        for index, value in enumerate(violations):
            trial.set_constraint(str(index), value)


def make_sampler(name: str, *, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler; population and start-up sizes scale with small budgets. In a
    constrained search the samplers read each trial's constraints (`record_violations`)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    startup = max(4, min(10, n_trials // 4))
    population = max(4, min(50, n_trials // 4))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                          group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=population)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise UserError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")


def make_pruner(
    name: str, objectives: Sequence[Objective], *, epochs: int,
    reduction_factor: int = DEFAULT_REDUCTION_FACTOR, first_rung: int = DEFAULT_FIRST_RUNG
) -> optuna.pruners.BasePruner:
    """The pruner for `objectives`.

    `pareto` ranks by (accuracy, static costs) and suits any number of objectives. Optuna's own
    pruners read a single direction, so with several objectives `sha` becomes accuracy-ranked ASHA
    (the same rungs as `pareto`, costs ignored) and `median`/`hyperband` are refused. No pruner
    decides before epoch `first_rung`.
    """
    multi = len(objectives) > 1
    costs = tuple(o.column for o in objectives if o.name != "accuracy")
    if name == "pareto":
        return ParetoPruner(costs, min_resource=first_rung, reduction_factor=reduction_factor)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "sha":
        if multi:
            return ParetoPruner((), min_resource=first_rung, reduction_factor=reduction_factor)
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_rung, reduction_factor=reduction_factor
        )
    if name in ("median", "hyperband"):
        if multi:
            raise UserError(
                f"pruner {name} ranks one objective; with objectives "
                f"{','.join(o.name for o in objectives)} use pareto, sha or none"
            )
        if name == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=first_rung - 1)
        return optuna.pruners.HyperbandPruner(
            min_resource=first_rung, max_resource=max(epochs, first_rung),
            reduction_factor=reduction_factor
        )
    raise UserError(f"unknown pruner {name!r}; valid pruners: {', '.join(PRUNERS)}")

"""Which architecture choices mattered: Optuna's parameter importances, one table per objective.

Read from the experiment's own Optuna study (its journal, or its `--storage` database), restricted
to trials that trained to completion inside the space: infeasible trials are told to Optuna with a
placeholder accuracy of 0, and seed points outside the space carry no parameters, so both would
only add noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.search_space import intersection_search_space
from optuna.trial import FrozenTrial, TrialState

from analysis.front import ObjectivesLike, as_objectives
from analysis.load import ExpPath, open_experiment
from nas.experiment import ExperimentConfig, open_storage, study_location
from nas.search.objectives import Objective
from nas.search.strategy import VIOLATIONS_ATTR
from search_spaces.errors import UserError

MIN_TRIALS = 2


def load_study(exp: Path, config: ExperimentConfig) -> optuna.Study:
    """The experiment's study, opened read-only in spirit (nothing here writes to it)."""
    try:
        storage = open_storage(exp, config.storage)
    except UserError as err:
        raise UserError(f"parameter importances need the Optuna study: {err}") from None
    try:
        return optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise UserError(f"study {config.name!r} not found in "
                        f"{study_location(exp, config.storage)}") from None


def _usable(trial: FrozenTrial) -> bool:
    violations = trial.user_attrs.get(VIOLATIONS_ATTR, (0.0,))
    return bool(trial.params) and all(v <= 0 for v in violations)


def _target(objective: Objective, config: ExperimentConfig) -> Callable[[FrozenTrial], float]:
    """Objectives the study optimized are its values; other costs come from the user attrs the
    search stores on every trial."""
    if objective.name in config.objectives:
        index = list(config.objectives).index(objective.name)
        return lambda t: float(t.values[index])
    return lambda t: float(t.user_attrs[objective.column])


def param_importances(experiment: ExpPath, objectives: ObjectivesLike | None = None,
                      seed: int = 0) -> pd.DataFrame:
    """Columns objective, param, importance (fANOVA, normalized to sum 1 per objective), most
    important first. Conditional parameters (asked for some architectures only) are left out:
    Optuna evaluates parameters shared by all trials. An objective with one value over all the
    trials (two anchors of equal MACs, say) has NaN importances: nothing varies to explain."""
    exp, config = open_experiment(experiment)
    objs = as_objectives(objectives if objectives is not None else config.objectives)
    study = load_study(exp, config)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if _usable(t)]
    rows = []
    for o in objs:
        measured = [t for t in trials if o.name in config.objectives or o.column in t.user_attrs]
        if len(measured) < MIN_TRIALS:
            raise UserError(
                f"{exp}: parameter importances for {o.name} need at least {MIN_TRIALS} completed "
                f"trials inside the search space, found {len(measured)}"
            )
        params = sorted(intersection_search_space(measured))
        target = _target(o, config)
        if len({target(t) for t in measured}) == 1:  # nothing varies, so nothing explains it
            rows.extend({"objective": o.name, "param": p, "importance": float("nan")}
                        for p in params)
            continue
        subset = optuna.create_study(directions=study.directions)
        subset.add_trials(measured)
        scores = get_param_importances(
            subset, evaluator=FanovaImportanceEvaluator(seed=seed), params=params,
            target=target,
        )
        rows.extend({"objective": o.name, "param": p, "importance": v} for p, v in scores.items())
    return pd.DataFrame(rows, columns=["objective", "param", "importance"])

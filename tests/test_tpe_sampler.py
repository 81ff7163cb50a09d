"""The caching TPE sampler proposes exactly what Optuna's TPESampler proposes."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import search_spaces as ss
from nas.search.pruner import INTERMEDIATE_ATTR
from nas.search.strategy import make_sampler, record_violations
from nas.search.tpe_sampler import CachingTPESampler, caching_supported, make_tpe_sampler

# (objectives, constrained): the search's multi-objective default, with a budget, and accuracy only.
CASES = [(2, False), (2, True), (1, False)]


def _drive(sampler: optuna.samplers.BaseSampler, space_name: str, objectives: int,
           trials: int, study: optuna.Study | None = None,
           constrained: bool = False) -> list[dict]:
    """A search-shaped study: values from a seeded hash of the parameters; every 4th trial
    pruned after one epoch (intermediate accuracy stored as the search stores it), every 7th
    failed, and constraint violations set as the search sets them."""
    space = ss.get_space(space_name)
    directions = ["maximize", "minimize"][:objectives]
    study = study or optuna.create_study(directions=directions, sampler=sampler)
    proposals = []
    for i in range(trials):
        trial = study.ask()
        space.suggest(trial)
        proposals.append(dict(trial.params))
        key = repr(sorted((k, repr(v)) for k, v in trial.params.items())).encode()
        rng = np.random.default_rng(list(key))
        accuracy, macs = float(rng.random()), float(rng.random() * 1e6)
        record_violations(trial, (macs - 6e5,), constrained)
        if i % 7 == 6:
            study.tell(trial, state=TrialState.FAIL)
        elif i % 4 == 3:
            if objectives == 1:
                trial.report(accuracy, 1)
            else:
                trial.set_user_attr(INTERMEDIATE_ATTR, {"1": accuracy})
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [accuracy, macs][:objectives])
    return proposals


@pytest.mark.parametrize("objectives,constrained", CASES)
@pytest.mark.parametrize("space_name", ss.list_spaces())
def test_same_proposals_as_optunas_tpe(space_name: str, objectives: int,
                                       constrained: bool) -> None:
    kwargs = dict(seed=3, n_startup_trials=4, multivariate=True, group=True)
    stock = _drive(optuna.samplers.TPESampler(**kwargs), space_name, objectives, 36,
                   constrained=constrained)
    caching = _drive(make_tpe_sampler(**kwargs), space_name, objectives, 36,
                     constrained=constrained)
    assert caching == stock
    assert len({repr(sorted(p.items())) for p in stock}) > 30  # the proposals do vary


def test_search_uses_the_caching_sampler() -> None:
    assert caching_supported()
    sampler = make_sampler("tpe", seed=0, n_trials=50)
    assert isinstance(sampler, CachingTPESampler)


def test_a_finished_trial_is_converted_once() -> None:
    """What makes an ask cheaper: after 30 trials, one more ask converts the parameters of the
    trial that finished since the last ask, not those of all 30 once per group and side."""
    sampler = make_tpe_sampler(seed=0, n_startup_trials=4, multivariate=True, group=True)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    _drive(sampler, "resnest", 2, 30, study)
    groups = len(sampler._internal_repr_cache)
    assert groups > 1  # the space's conditional parameters form several groups
    misses = []
    original = sampler._get_params
    sampler._get_params = lambda trial, study: misses.append(trial.number) or original(trial, study)
    _drive(sampler, "resnest", 2, 1, study)
    assert set(misses) == {29}  # the last trial told, once for each group and side at most
    assert len(misses) <= 2 * groups


def _interleaved(sampler: optuna.samplers.BaseSampler) -> list[dict]:
    """Ask-and-tell with a tell between one trial's suggestions: its later parameters, new to
    its relative search space, are sampled independently and must see the trial told in
    between (which is the first to carry `w{i}`), as Optuna's sampler does."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    proposals = []
    for i in range(24):
        trial = study.ask()
        x = trial.suggest_float("x", -3.0, 3.0)
        c = trial.suggest_categorical("c", ["a", "b", "c"])
        later = study.ask()  # proposed now, told after the next trial's first suggestions
        later.suggest_float("x", -3.0, 3.0)
        later.suggest_categorical("c", ["a", "b", "c"])
        later.suggest_float(f"w{i}", 0.0, 1.0)
        study.tell(trial, [-(x - 1) ** 2, float(i % 5)])
        nxt = study.ask()
        nxt.suggest_float("x", -3.0, 3.0)
        study.tell(later, [-float(later.params["x"]) ** 2, float(i % 3) + (c == "b")])
        nxt.suggest_float(f"z{i % 2}", 0.0, 1.0)  # new for this trial: sampled independently
        nxt.suggest_float(f"w{i}", 0.0, 1.0)  # observed only in `later`, told just now
        study.tell(nxt, [-abs(nxt.params["x"]), float(i % 4)])
        proposals += [trial.params, later.params, nxt.params]
    return proposals


@pytest.mark.parametrize("constant_liar", [False, True])
def test_same_proposals_when_tells_interleave_suggestions(constant_liar: bool) -> None:
    """Also what a search with several trials at once does: with constant liar (Optuna 5's
    default) the running trials count as above the split."""
    kwargs = dict(seed=5, n_startup_trials=4, multivariate=True, group=True,
                  constant_liar=constant_liar)
    assert _interleaved(make_tpe_sampler(**kwargs)) == _interleaved(
        optuna.samplers.TPESampler(**kwargs))

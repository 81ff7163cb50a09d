"""Optuna's TPE with its per-ask repeated work cached: the same proposals, less time per ask.

With `multivariate=True, group=True` (our default), Optuna's `TPESampler` re-does, on every ask,
work whose answer has not changed (docs/benchmarks.md, "Fourth round"):

- it re-adds every finished trial to its group decomposition of the search space;
- it splits all trials into "below" and "above" once per parameter group, although every group
  gets the same split (the split reads only trial values and states);
- it converts every trial's parameters to internal form once per group and side, although a
  finished trial's parameters never change.

All three are linear in the study's size per ask, which is what made TPE's ask grow from ~30 ms
to ~250 ms over 1,000 trials. `CachingTPESampler` keeps each answer instead: the decomposition is
extended by new trials only, the split is computed once per ask, and a finished trial's internal
parameters once per group. The model, the random stream and so the proposals are Optuna's
(`tests/test_tpe_sampler.py` compares them trial by trial with the stock sampler).

The caches rely on private parts of Optuna's TPE (present from 4.2 to 5.x). `make_tpe_sampler`
returns the stock sampler where they are missing. With `constant_liar` (on by default in Optuna
5) the split also holds the other running trials, whose parameters are read afresh at every ask:
only finished trials' conversions are kept.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

try:  # Private to Optuna: used only when every piece is there (see `caching_supported`).
    from optuna.samplers._tpe import sampler as _tpe_module
    from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace
except ImportError:  # pragma: no cover - depends on the installed Optuna
    _tpe_module = None
    _GroupDecomposedSearchSpace = object  # type: ignore[assignment,misc]

_FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
_LIAR_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def caching_supported() -> bool:
    """Whether the installed Optuna has the private TPE pieces the caches stand in for."""
    needed_functions = ("_split_trials", "default_gamma", "default_gamma_multiobjective")
    needed_methods = ("_sample", "_get_internal_repr", "_build_parzen_estimator",
                      "_compute_acquisition_func", "_compare", "_get_params")
    return (
        _tpe_module is not None
        and all(hasattr(_tpe_module, name) for name in needed_functions)
        and all(hasattr(TPESampler, name) for name in needed_methods)
        and _GroupDecomposedSearchSpace is not object
        and hasattr(_GroupDecomposedSearchSpace, "calculate")
    )


class _IncrementalGroupDecomposition(_GroupDecomposedSearchSpace):  # type: ignore[misc,valid-type]
    """Optuna's group decomposition, extended by each finished trial once instead of every ask.

    Re-adding a trial whose parameters the decomposition already covers leaves it unchanged, so
    adding only the new trials gives the same groups."""

    def __init__(self, include_pruned: bool) -> None:
        super().__init__(include_pruned)
        self._seen: set[int] = set()

    def calculate(self, study: Study, use_cache: bool = False) -> Any:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("a TPE sampler's group decomposition cannot serve two studies")
        states = _FINISHED_STATES if self._include_pruned else (TrialState.COMPLETE,)
        for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if trial._trial_id not in self._seen:
                self._seen.add(trial._trial_id)
                self._search_space.add_distributions(trial.distributions)
        return copy.deepcopy(self._search_space)


class CachingTPESampler(TPESampler):
    """`optuna.samplers.TPESampler` (same arguments, same proposals) that caches per-ask work.

    Build it through `make_tpe_sampler`, which falls back to the stock sampler where the
    caches cannot apply."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self._group:
            self._group_decomposed_search_space = _IncrementalGroupDecomposition(True)
        # Per thread (Optuna may ask from several): the split of the `sample_relative` call in
        # progress, once computed. Outside such a call (`sample_independent`, which may follow
        # other tells) nothing is kept.
        self._split_memo: dict[int, list[tuple[list[FrozenTrial], list[FrozenTrial]]]] = {}
        # (parameter names, their distributions) -> trial id -> internal values or None (a
        # trial without all of them). Only finished trials are stored: theirs never change.
        self._internal_repr_cache: dict[tuple, dict[int, tuple | None]] = {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """One split serves every parameter group of this ask."""
        self._split_memo[threading.get_ident()] = []
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            self._split_memo.pop(threading.get_ident(), None)

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """Optuna's `_sample`, except that within one `sample_relative` call every parameter
        group shares one split: they all see the same trials."""
        if self._gamma is None:
            self._gamma = (_tpe_module.default_gamma if len(study.directions) <= 1
                           else _tpe_module.default_gamma_multiobjective)
        memo = self._split_memo.get(threading.get_ident())
        if memo is None:  # sample_independent: nothing shared
            below_trials, above_trials = self._split(study, trial)
        else:
            if not memo:
                memo.append(self._split(study, trial))
            below_trials, above_trials = memo[0]
        mpe_below = self._build_parzen_estimator(study, search_space, below_trials,
                                                 handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above_trials,
                                                 handle_below=False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acquisition = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        chosen = TPESampler._compare(samples_below, acquisition)
        return {name: dist.to_external_repr(chosen[name]) for name, dist in search_space.items()}

    def _split(self, study: Study, trial: FrozenTrial) -> tuple[list[FrozenTrial],
                                                                list[FrozenTrial]]:
        """The trials TPE models, split into below and above, as Optuna's `_sample` splits them:
        with constant liar (Optuna 5's default) the other running trials count as above."""
        if self._constant_liar:
            trials = study._get_trials(deepcopy=False, states=_LIAR_STATES, use_cache=False)
            trials = [t for t in trials if t.number != trial.number]
        else:
            trials = study._get_trials(deepcopy=False, states=_FINISHED_STATES, use_cache=True)
        finished = sum(t.state != TrialState.RUNNING for t in trials)
        return _tpe_module._split_trials(study, trials, self._gamma(finished))

    def _get_internal_repr(self, trials: list[FrozenTrial],
                           search_space: dict[str, BaseDistribution],
                           study: Study) -> dict[str, np.ndarray]:
        """Each finished trial's internal values for these parameters, converted once."""
        names = tuple(search_space)
        cache = self._internal_repr_cache.setdefault(
            (names, tuple(search_space.values())), {}
        )
        rows = []
        for trial in trials:
            row = cache.get(trial._trial_id, False)
            if row is False:
                params = self._get_params(trial, study)
                row = (tuple(search_space[n].to_internal_repr(params[n]) for n in names)
                       if search_space.keys() <= params.keys() else None)
                if trial.state.is_finished():
                    cache[trial._trial_id] = row
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        return {name: np.asarray(column) for name, column in zip(names, columns, strict=True)}


def make_tpe_sampler(**kwargs: Any) -> optuna.samplers.TPESampler:
    """A TPE sampler with Optuna's arguments: the caching one where it applies, else Optuna's."""
    if not caching_supported():
        return TPESampler(**kwargs)
    return CachingTPESampler(**kwargs)

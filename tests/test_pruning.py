"""Pruning in multi-objective searches: the ParetoPruner (MO-ASHA) and how the controller tells
Optuna about pruned trials. Driven without Ray: the controller is Ray-free by design."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance
from optuna.trial import TrialState

from nas.experiment import ExperimentConfig, read_trials_csv
from nas.search.controller import SearchController
from nas.search.objectives import parse_objectives
from nas.search.pareto import (
    crowding_distance,
    pareto_mask,
    promotion_keys,
    promotion_order,
    top_k_with_ties,
)
from nas.search.pruner import INTERMEDIATE_ATTR, ParetoPruner, intermediate_values
from nas.search.strategy import SAMPLERS, make_pruner, make_sampler
from search_spaces import UserError, get_space


def _config(**kw) -> ExperimentConfig:
    base = dict(name="t", space="resnest", preset="small", data="digits", image_size=16,
                objectives=("accuracy", "macs"), epochs=9, trials=30, time_budget_s=3600.0,
                sampler="random", pruner="pareto", seed=0, storage="")
    return ExperimentConfig(**{**base, **kw})


def _fake_costs(spec) -> dict[str, float]:
    """A deterministic cost that grows with size, standing in for the flop counter."""
    macs = float(sum(s.depth * s.width * (s.radix + 1) for s in spec.stages) * spec.base_planes)
    return {"macs": macs, "params": macs / 10, "peak_memory_bytes": macs * 4}


def _controller(tmp_path: Path, pruner_name: str, objectives: str = "accuracy,macs",
                sampler_name: str = "random", **kw) -> SearchController:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = _config(pruner=pruner_name, objectives=tuple(objectives.split(",")), **kw)
    objs = parse_objectives(objectives)
    study = optuna.create_study(
        directions=[o.direction for o in objs],
        sampler=make_sampler(sampler_name, seed=0, n_trials=config.trials),
        pruner=make_pruner(pruner_name, objs, epochs=config.epochs),
        study_name="t",
    )
    return SearchController(config, tmp_path, study, get_space("resnest"), objs, _fake_costs,
                            lambda tid, spec, costs, resume: {"trial_id": tid}, log=lambda _: None)


def _learning_curve(macs: float, epoch: int) -> float:
    """Big models learn fast; small ones learn slowly but end close: the trap of rank pruning."""
    speed = 0.15 + 0.8 * min(macs / 40000.0, 1.0)
    return float(0.9 * (1 - np.exp(-speed * epoch)))


def _simulate(ctrl: SearchController, n: int) -> None:
    """Trials run one after another, reporting each epoch until done or pruned."""
    for _ in range(n):
        proposal = ctrl.next_trial()
        assert proposal is not None
        trial_id, _ = proposal
        macs = ctrl.records[trial_id].costs["macs"]
        result = {}
        for epoch in range(1, ctrl.config.epochs + 1):
            result = {"epoch": epoch, "val_top1": _learning_curve(macs, epoch), "train_loss": 1.0}
            if ctrl.on_result(trial_id, result):
                break
        ctrl.on_complete(trial_id, result)


def test_pareto_pruner_keeps_cheap_slow_learners_that_accuracy_sha_kills(tmp_path: Path) -> None:
    pareto = _controller(tmp_path / "a", "pareto")
    sha = _controller(tmp_path / "b", "sha")  # multi-objective sha = accuracy-only ASHA
    _simulate(pareto, 30)
    _simulate(sha, 30)

    def cheapest_complete(ctrl: SearchController) -> float:
        return min(r.costs["macs"] for r in ctrl.records.values() if r.state == "COMPLETE")

    # Same proposals (same sampler seed), different pruning: the Pareto pruner lets the cheapest
    # architectures finish, accuracy-only halving prunes them.
    assert cheapest_complete(pareto) < cheapest_complete(sha)
    assert any(r.state == "PRUNED" for r in pareto.records.values())


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_pruned_trials_are_pruned_in_optuna_and_absent_from_the_front(
    tmp_path: Path, sampler: str
) -> None:
    ctrl = _controller(tmp_path, "pareto", sampler_name=sampler)
    _simulate(ctrl, 20)
    study_states = {t.number: t.state for t in ctrl.study.trials}
    pruned = [r for r in ctrl.records.values() if r.state == "PRUNED"]
    assert pruned, "a 20-trial search with the default eta prunes something"
    for record in pruned:
        assert study_states[record.number] == TrialState.PRUNED
        assert record.curve and record.epochs < ctrl.config.epochs  # curve kept
        assert record.reason.startswith("pruned at epoch")
    front_ids = {r.trial_id for r in ctrl.front()}
    assert front_ids and not front_ids & {r.trial_id for r in pruned}
    # Intermediate values reached the multi-objective study despite Trial.report refusing them.
    assert all(intermediate_values(ctrl.study.trials[r.number]) for r in pruned)
    # The csv agrees with the in-memory records.
    assert {r.trial_id: r.state for r in read_trials_csv(tmp_path)} == {
        r.trial_id: r.state for r in ctrl.records.values()
    }


def test_single_objective_search_uses_optuna_median_pruner(tmp_path: Path) -> None:
    ctrl = _controller(tmp_path, "median", objectives="accuracy")
    assert isinstance(ctrl.study.pruner, optuna.pruners.MedianPruner)
    _simulate(ctrl, 15)
    states = [t.state for t in ctrl.study.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states


def test_constraints_are_enforced_before_training_and_told_to_the_sampler(tmp_path: Path) -> None:
    ctrl = _controller(tmp_path, "none", constraints={"max_macs": 6000.0})
    trained = []
    for _ in range(8):
        trial_id, _ = ctrl.next_trial()
        trained.append(trial_id)
        ctrl.on_complete(trial_id, {"epoch": 9, "val_top1": 0.5})
    assert all(ctrl.records[t].costs["macs"] <= 6000.0 for t in trained)
    infeasible = [r for r in ctrl.records.values() if r.state == "INFEASIBLE"]
    assert infeasible, "the random sampler proposes some too-large networks"
    for record in infeasible:
        assert record.costs["macs"] > 6000.0 and "macs" in record.reason and not record.curve
        frozen = ctrl.study.trials[record.number]
        assert frozen.user_attrs["constraint_violations"][-1] > 0
    # What the samplers read: each trial's own constraints, set when it was proposed.
    for record in ctrl.records.values():
        violations = list(ctrl.study.trials[record.number].constraints.values())
        assert (max(violations) > 0) == (record.state == "INFEASIBLE"), record.trial_id


def test_an_unconstrained_search_gives_the_samplers_no_constraints(tmp_path: Path) -> None:
    """Any constraint value puts Optuna's samplers in constrained mode; without limits there
    must be none."""
    ctrl = _controller(tmp_path, "none")
    for _ in range(3):
        trial_id, _ = ctrl.next_trial()
        ctrl.on_complete(trial_id, {"epoch": 9, "val_top1": 0.5})
    for frozen in ctrl.study.trials:
        assert frozen.constraints == {}


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_use_no_deprecated_argument(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        make_sampler(name, seed=0, n_trials=20)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "gp" else n
                                  for n in SAMPLERS])  # a GP ask takes seconds on 25 parameters
def test_seeded_samplers_reproduce_their_proposals(tmp_path: Path, name: str) -> None:
    """Same seed, same results told: the same architectures, past the start-up trials."""

    def proposals(path: Path) -> list:
        ctrl = _controller(path, "none", sampler_name=name)
        for _ in range(10):
            trial_id, _ = ctrl.next_trial()
            macs = ctrl.records[trial_id].costs["macs"]
            ctrl.on_complete(trial_id, {"epoch": 9, "val_top1": _learning_curve(macs, 9)})
        return [r.spec for r in ctrl.records.values()]

    assert proposals(tmp_path / "a") == proposals(tmp_path / "b")


@pytest.mark.parametrize("name", ["median", "hyperband"])
def test_single_objective_pruners_are_refused_for_multi_objective(name: str) -> None:
    with pytest.raises(UserError, match=f"pruner {name} ranks one objective"):
        make_pruner(name, parse_objectives("accuracy,macs"), epochs=4)


def test_pruner_rungs_and_promotion_order() -> None:
    pruner = ParetoPruner(("macs",), min_resource=1, reduction_factor=3)
    assert [s for s in range(1, 30) if pruner.is_rung(s)] == [1, 3, 9, 27]
    values = np.array([[0.9, 100.0], [0.5, 10.0], [0.4, 50.0], [0.95, 200.0]])
    maximize = [True, False]
    assert pareto_mask(values, maximize).tolist() == [True, True, False, True]
    order = promotion_order(values, maximize)
    assert set(order[:3]) == {0, 1, 3} and order[3] == 2


def _promotion_by_definition(values: np.ndarray, maximize: list[bool], k: int) -> np.ndarray:
    """The best k rows by (front, -crowding) over all fronts, plus rows tied with the k-th."""
    keys = promotion_keys(values, maximize)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    kth = keys[order[min(k, len(order)) - 1]]
    return (keys[:, 0] < kth[0]) | ((keys[:, 0] == kth[0]) & (keys[:, 1] <= kth[1]))


def test_top_k_with_ties_matches_its_definition() -> None:
    """`top_k_with_ties` sorts only the fronts it needs and computes crowding for one; on random
    rows (ties, duplicates, -inf accuracies, 1-3 objectives) it promotes what the definition
    does."""
    rng = np.random.default_rng(0)
    for case in range(2000):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        values = rng.integers(0, 6, (n, m)).astype(float) if case % 2 else rng.random((n, m))
        if case % 5 == 0:
            values[rng.random(n) < 0.2, 0] = -np.inf
        maximize = [bool(x) for x in rng.integers(0, 2, m)]
        k = int(rng.integers(1, n + 1))
        assert not np.isnan(promotion_keys(values, maximize)).any(), case
        expected = _promotion_by_definition(values, maximize, k)
        got = top_k_with_ties(values, maximize, k)
        assert got.tolist() == expected.tolist(), (case, k)
        assert got.sum() >= k, (case, k)


def test_crowding_distance_treats_infinite_values_as_optuna_does() -> None:
    """The pruner ranks a trial without a finite accuracy at -inf. Crowding then follows Optuna's
    NSGA-II (span of the finite values, inf - inf = 0) on random fronts with infinite values, and
    is never NaN (dividing by an infinite span made the infinite row's neighbour NaN)."""
    rng = np.random.default_rng(0)
    for case in range(200):
        n, m = int(rng.integers(3, 9)), int(rng.integers(1, 4))
        values = rng.permutation(3 * n * m)[: n * m].reshape(n, m) / 7.0  # distinct per column
        for j in range(m):
            if rng.random() < 0.6:
                values[int(rng.integers(n)), j] = rng.choice([np.inf, -np.inf])
        population = [optuna.trial.create_trial(values=list(row)) for row in values]
        for number, trial in enumerate(population):
            trial.number = number
        by_number = _calc_crowding_distance(population)
        got = crowding_distance(values)
        assert not np.isnan(got).any(), case
        np.testing.assert_allclose(got, [by_number[i] for i in range(n)], err_msg=str(case))


def test_a_trial_without_accuracy_does_not_hide_its_neighbour_on_the_front() -> None:
    """(accuracy, MACs), all on one front; the cheapest has no finite accuracy (-inf). The next
    cheapest is as far out on the accuracy axis as a boundary point, so it is kept; before, its
    crowding was NaN and it lost to the two middle rows."""
    values = np.array([[-np.inf, 1.0], [0.25, 2.0], [0.5, 3.0], [0.75, 4.0], [1.0, 5.0]])
    assert top_k_with_ties(values, [True, False], 3).tolist() == [True, True, False, False, True]


def _decision_by_definition(pruner: ParetoPruner, study: optuna.Study,
                            trial: optuna.trial.FrozenTrial) -> bool:
    """MO-ASHA's rule read straight off the study: rank every COMPLETE, PRUNED or RUNNING trial
    that reached the deciding trial's rung (and has its costs), in trial-number order."""
    own = intermediate_values(trial)
    step = max(own)
    if not pruner.is_rung(step):
        return False
    rows, index = [], None
    for t in study.get_trials(deepcopy=False):
        t = trial if t.number == trial.number else t
        costs = [t.user_attrs.get(a) for a in pruner.cost_attrs]
        curve = intermediate_values(t)
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            continue
        if step in curve and None not in costs:
            index = len(rows) if t.number == trial.number else index
            rows.append([curve[step], *costs])
    if index is None:
        return False
    values = np.array(rows, dtype=float)
    values[~np.isfinite(values[:, 0]), 0] = -np.inf
    keep = max(1, len(rows) // pruner.reduction_factor)
    return not top_k_with_ties(values, [True] + [False] * len(pruner.cost_attrs), keep)[index]


@pytest.mark.filterwarnings("ignore:The value nan")  # a NaN final accuracy: told as FAIL
@pytest.mark.parametrize("cost_attrs", [("macs",), ("macs", "params"), ()])
def test_pruner_kept_across_a_study_decides_as_the_definition(cost_attrs: tuple[str, ...]) -> None:
    """One pruner across a whole study (finished trials filed per rung, only unfinished ones
    re-read) against the rule applied to the whole study at every decision: three trials
    running at once, finishing between decisions, failed and enqueued (waiting) trials, trials
    without costs, NaN accuracies and ties; and it still pickles."""
    rng = np.random.default_rng(3)
    study = optuna.create_study(directions=["maximize", "minimize"])
    kept = ParetoPruner(cost_attrs, min_resource=1, reduction_factor=2)
    running: list[tuple[optuna.Trial, dict[str, float]]] = []
    decisions: list[bool] = []
    started = 0
    while started < 120 or running:
        while started < 120 and len(running) < 3:
            if started % 11 == 5:  # a queued trial waits in the study until asked for
                study.enqueue_trial({})
            trial = study.ask()
            if started % 7 != 3:  # some trials never get costs: never ranked
                for attr in cost_attrs:
                    trial.set_user_attr(attr, float(rng.integers(1, 6)))
            running.append((trial, {}))
            started += 1
        trial, curve = running.pop(int(rng.integers(len(running))))
        accuracy = float("nan") if rng.random() < 0.05 else float(rng.integers(0, 5)) / 4
        curve[str(len(curve) + 1)] = accuracy
        trial.set_user_attr(INTERMEDIATE_ATTR, dict(curve))
        frozen = study.get_trials(deepcopy=False)[trial.number]
        verdict = kept.prune(study, frozen)
        assert verdict == _decision_by_definition(kept, study, frozen), trial.number
        decisions.append(verdict)
        if verdict:
            study.tell(trial, state=TrialState.PRUNED)
        elif trial.number % 13 == 6:
            study.tell(trial, state=TrialState.FAIL)
        elif len(curve) == 4:
            study.tell(trial, [curve["4"], trial.user_attrs.get("macs", 1.0)])
        else:
            running.append((trial, curve))
    assert any(decisions) and not all(decisions)
    restored = pickle.loads(pickle.dumps(kept))
    assert restored.prune(study, frozen) == kept.prune(study, frozen)


def test_pruner_decision_reads_only_unfinished_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    """After 300 finished trials, a decision reads the curves of the trials still in flight and
    nothing else: its Python work does not grow with the search."""
    import nas.search.pruner as module

    study = optuna.create_study(directions=["maximize", "minimize"])
    pruner = ParetoPruner(("macs",), min_resource=1, reduction_factor=2)
    for i in range(300):
        trial = study.ask()
        trial.set_user_attr("macs", float(i % 17))
        trial.set_user_attr(INTERMEDIATE_ATTR, {"1": (i % 10) / 10})
        pruner.prune(study, study.get_trials(deepcopy=False)[trial.number])
        study.tell(trial, state=TrialState.PRUNED)
    live = [study.ask() for _ in range(3)]
    for i, trial in enumerate(live):
        trial.set_user_attr("macs", 1.0)
        trial.set_user_attr(INTERMEDIATE_ATTR, {"1": 0.5 + i / 10})
    reads: list[int] = []
    real = module.intermediate_values
    monkeypatch.setattr(module, "intermediate_values", lambda t: reads.append(t.number) or real(t))
    frozen = study.get_trials(deepcopy=False)[live[0].number]
    verdict = pruner.prune(study, frozen)
    assert verdict == _decision_by_definition(pruner, study, frozen)
    assert sorted(reads) == [299, 300, 301, 302], reads


def test_pruner_deciding_for_a_closed_trial_counts_it_once_as_passed() -> None:
    """A trial the study has closed (and the pruner has filed) decided again with newer values:
    ranked once, with the values passed in, not also with the study's copy."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    pruner = ParetoPruner(("macs",), min_resource=1, reduction_factor=2)
    for accuracy in (0.1, 0.2, 0.3, 0.7, 0.8, 0.85, 0.0):
        trial = study.ask()
        trial.set_user_attr("macs", 1.0)
        trial.set_user_attr(INTERMEDIATE_ATTR, {"1": accuracy})
        study.tell(trial, state=TrialState.PRUNED)
    probe = study.ask()
    probe.set_user_attr("macs", 1.0)
    probe.set_user_attr(INTERMEDIATE_ATTR, {"1": 0.5})
    pruner.prune(study, study.get_trials(deepcopy=False)[probe.number])  # files the closed trials
    study.tell(probe, state=TrialState.FAIL)
    again = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={
        "macs": 1.0, INTERMEDIATE_ATTR: {"1": 0.65}})
    again.number = study.get_trials()[6].number
    # 7 peers, the top 3 continue (0.85, 0.8, 0.7): 0.65 stops. Counted twice (0.0 as well),
    # 8 peers would keep 4 and 0.65 would continue.
    assert _decision_by_definition(pruner, study, again) is True
    assert pruner.prune(study, again) is True

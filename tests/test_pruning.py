"""Pruning in multi-objective searches: the ParetoPruner (MO-ASHA) and how the controller tells
Optuna about pruned trials. Driven without Ray: the controller is Ray-free by design."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from nas.controller import SearchController
from nas.experiment import ExperimentConfig, read_trials_csv
from nas.objectives import parse_objectives
from nas.pareto import pareto_mask, promotion_keys, promotion_order, top_k_with_ties
from nas.pareto_pruner import INTERMEDIATE_ATTR, ParetoPruner, intermediate_values
from nas.strategy import make_pruner, make_sampler
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
                memory: bool = True, sampler_name: str = "random", **kw) -> SearchController:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = _config(pruner=pruner_name, objectives=tuple(objectives.split(",")), **kw)
    objs = parse_objectives(objectives)
    study = optuna.create_study(
        directions=[o.direction for o in objs],
        sampler=make_sampler(sampler_name, seed=0, n_trials=config.trials,
                             constrained=bool(config.constraints)),
        pruner=make_pruner(pruner_name, objs, epochs=config.epochs),
        storage=optuna.storages.InMemoryStorage() if memory else f"sqlite:///{tmp_path / 'study.db'}",
        study_name="t",
    )
    return SearchController(config, tmp_path, study, get_space("resnest"), objs, _fake_costs,
                            lambda tid, spec, resume: {"trial_id": tid}, log=lambda _: None)


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
    rows (ties, duplicates, -inf accuracies, 1-3 objectives) it promotes what the definition does."""
    rng = np.random.default_rng(0)
    for case in range(2000):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        values = rng.integers(0, 6, (n, m)).astype(float) if case % 2 else rng.random((n, m))
        if case % 5 == 0:
            values[rng.random(n) < 0.2, 0] = -np.inf
        maximize = [bool(x) for x in rng.integers(0, 2, m)]
        k = int(rng.integers(1, n + 1))
        with np.errstate(invalid="ignore"):
            expected = _promotion_by_definition(values, maximize, k)
            got = top_k_with_ties(values, maximize, k)
        assert got.tolist() == expected.tolist(), (case, k)


def test_pruner_caching_finished_trials_decides_like_a_fresh_pruner() -> None:
    """One pruner across a whole study (finished trials' rows cached) against a fresh pruner at
    every decision, with three trials running at once and trials finishing between decisions;
    and it still pickles."""
    rng = np.random.default_rng(3)
    study = optuna.create_study(directions=["maximize", "minimize"])
    kept = ParetoPruner(("macs",), min_resource=1, reduction_factor=2)
    running: list[tuple[optuna.Trial, dict[str, float]]] = []
    decisions: list[bool] = []
    started = 0
    while started < 80 or running:
        while started < 80 and len(running) < 3:
            trial = study.ask()
            if started % 7 != 3:  # some trials never get costs: never ranked
                trial.set_user_attr("macs", float(rng.integers(1, 20)))
            running.append((trial, {}))
            started += 1
        trial, curve = running.pop(int(rng.integers(len(running))))
        curve[str(len(curve) + 1)] = float(rng.random())
        trial.set_user_attr(INTERMEDIATE_ATTR, dict(curve))
        frozen = study._storage.get_trial(trial._trial_id)
        verdict = kept.prune(study, frozen)
        assert verdict == ParetoPruner(("macs",), 1, 2).prune(study, frozen), trial.number
        decisions.append(verdict)
        if verdict:
            study.tell(trial, state=TrialState.PRUNED)
        elif len(curve) == 4:
            study.tell(trial, [curve["4"], trial.user_attrs.get("macs", 1.0)])
        else:
            running.append((trial, curve))
    assert any(decisions) and not all(decisions)
    restored = pickle.loads(pickle.dumps(kept))
    assert restored.prune(study, frozen) == kept.prune(study, frozen)

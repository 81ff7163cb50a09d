"""The search samples against an in-memory study and persists each trial to SQLite in a few
transactions: the durable study must end up identical, survive a resume, and cost few commits.
Every test runs with both writers: `nas.search.rdb_trial_writer` (the default) and Optuna's public API
(the fallback for storages that writer cannot handle)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from test_pruning import _config, _fake_costs, _simulate

from nas.experiment import open_storage, read_trials_csv
from nas.search import rdb_trial_writer
from nas.search.controller import SearchController
from nas.search.objectives import parse_objectives
from nas.search.strategy import SAMPLERS, make_pruner, make_sampler
from search_spaces import get_space

OBJECTIVES = parse_objectives("accuracy,macs")


@pytest.fixture(autouse=True, params=["direct", "optuna"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which writer the mirror uses; "optuna" is what a storage the direct writer refuses gets."""
    if request.param == "optuna":
        monkeypatch.setattr(rdb_trial_writer, "rdb_backend", lambda storage: None)
    return request.param


def _durable(tmp_path: Path, sampler: str, seed: int = 0) -> optuna.Study:
    return optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"), study_name="t",
        load_if_exists=True, directions=[o.direction for o in OBJECTIVES],
        sampler=make_sampler(sampler, seed=seed, n_trials=12),
        pruner=make_pruner("pareto", OBJECTIVES, epochs=4),
    )


def _controller(tmp_path: Path, study: optuna.Study, records: list = ()) -> SearchController:
    config = _config(epochs=4, trials=40, constraints={"max_macs": 30000.0})
    return SearchController(config, tmp_path, study, get_space("resnest"), OBJECTIVES,
                            _fake_costs, lambda tid, spec, resume: {"trial_id": tid},
                            records=records, log=lambda _: None)


def _content(t: FrozenTrial) -> tuple:
    """A trial's content as SQLite stores it (attributes are JSON: tuples read back as lists)."""
    return (t.number, t.state, t.values, t.params, t.distributions, _json(t.user_attrs),
            _json(t.system_attrs), t.intermediate_values)


def _json(value: dict) -> dict:
    return json.loads(json.dumps(value))


def _study_attrs(study: optuna.Study) -> dict:
    return _json(study._storage.get_study_system_attrs(study._study_id))


def _reloaded(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_durable_study_equals_the_in_memory_one(tmp_path: Path, sampler: str,
                                                writer: str) -> None:
    ctrl = _controller(tmp_path, _durable(tmp_path, sampler))
    assert isinstance(ctrl.study._storage, optuna.storages.InMemoryStorage)
    assert (ctrl.mirror._rdb is not None) == (writer == "direct")
    _simulate(ctrl, 10)
    ctrl.flush()
    memory, durable = ctrl.study, _reloaded(tmp_path)
    states = {t.state for t in memory.trials}
    assert TrialState.COMPLETE in states and len(memory.trials) >= 10
    assert [_content(t) for t in durable.trials] == [_content(t) for t in memory.trials]
    if writer == "direct":  # Optuna's API stamps its own completion time; this copies memory's
        assert [(t.datetime_start, t.datetime_complete) for t in durable.trials] == [
            (t.datetime_start, t.datetime_complete) for t in memory.trials]
    # Sampler state kept on the study, e.g. NSGA-II's population cache or QMC's sequence id.
    assert _study_attrs(durable) == _study_attrs(memory)


def test_a_trial_costs_a_few_commits_not_one_per_parameter(tmp_path: Path) -> None:
    study = _durable(tmp_path, "tpe")
    commits = []
    event.listen(study._storage._backend.engine, "commit", lambda conn: commits.append(1))
    ctrl = _controller(tmp_path, study)
    _simulate(ctrl, 10)
    ctrl.flush()
    trials = len(ctrl.study.trials)
    # Creation (params, costs, spec) is one transaction; the end is intermediate accuracies,
    # constraint values and state, plus the odd read. Optuna's own path took ~50 per trial here
    # (one per parameter and attribute: 515 for these 10 trials).
    assert len(commits) <= 5 * trials, (len(commits), trials)


def test_resume_reloads_the_study_and_fails_the_interrupted_trial(tmp_path: Path) -> None:
    first = _controller(tmp_path, _durable(tmp_path, "tpe"))
    _simulate(first, 6)
    interrupted, _ = first.next_trial()  # the driver dies while this one trains
    first.flush()
    number = first.records[interrupted].number
    assert _reloaded(tmp_path).trials[number].state == TrialState.RUNNING
    before = len(first.study.trials)

    again = _controller(tmp_path, _durable(tmp_path, "tpe", seed=1))
    assert [t.number for t in again.study.trials] == list(range(before))
    assert again.study.trials[number].state == TrialState.FAIL
    assert _reloaded(tmp_path).trials[number].state == TrialState.FAIL
    _simulate(again, 3)
    again.flush()
    memory, durable = again.study, _reloaded(tmp_path)
    assert len(memory.trials) >= before + 3
    assert [_content(t) for t in durable.trials] == [_content(t) for t in memory.trials]


def test_a_start_lost_with_the_driver_is_padded_and_the_trial_rerun(tmp_path: Path) -> None:
    first = _controller(tmp_path, _durable(tmp_path, "tpe"))
    _simulate(first, 4)
    first.flush()
    first.mirror._queue.put = lambda item: None  # the driver dies before its writer runs
    lost, _ = first.next_trial()
    lost_record = first.records[lost]
    assert len(_reloaded(tmp_path).trials) == lost_record.number  # the study never saw it

    again = _controller(tmp_path, _durable(tmp_path, "tpe", seed=1), read_trials_csv(tmp_path))
    again.flush()
    padded = again.study.trials[lost_record.number]
    assert padded.state == TrialState.FAIL and "lost" in padded.user_attrs
    assert again.records[lost].state == "FAIL" and "re-queued" in again.records[lost].reason
    rerun, _ = again.next_trial()  # numbers stay aligned with trials.csv; the spec runs again
    assert again.records[rerun].number == lost_record.number + 1
    assert again.records[rerun].spec == lost_record.spec
    again.flush()
    assert [_content(t) for t in _reloaded(tmp_path).trials] == [
        _content(t) for t in again.study.trials]


def test_a_failed_background_write_stops_the_search_with_its_cause(tmp_path: Path) -> None:
    ctrl = _controller(tmp_path, _durable(tmp_path, "tpe"))

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    ctrl.mirror.durable._storage.create_new_trial = refuse
    ctrl.mirror.durable._storage._backend.scoped_session = refuse  # what the direct writer uses
    ctrl.next_trial()
    with pytest.raises(RuntimeError, match="disk full"):
        ctrl.flush()

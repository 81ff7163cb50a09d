"""The direct RDB writer must leave rows that Optuna reads back as exactly the trial it was given
(values and intermediate values with inf and NaN, attributes overwritten, any state), and a study
that Optuna's own API goes on writing and checking afterwards."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from nas.experiment import open_storage
from nas.search import rdb_trial_writer
from nas.search.study_mirror import WRITES_ENV, StudyMirror

DISTRIBUTIONS = {"radix": IntDistribution(0, 4), "width": FloatDistribution(0.5, 2.0, log=True),
                 "pool": CategoricalDistribution(["avg", "max", None])}
START = datetime.datetime(2026, 11, 26, 9, 30, 15, 123456)


def _trial(state: TrialState, values: list[float] | None, steps: dict[int, float],
           user: dict, system: dict, params: dict | None = None) -> FrozenTrial:
    trial = create_trial(
        state=state, values=values, params=params or {"radix": 2, "width": 0.75, "pool": None},
        distributions=DISTRIBUTIONS, user_attrs=user, system_attrs=system,
        intermediate_values=steps)
    trial.datetime_start = START
    trial.datetime_complete = START + datetime.timedelta(seconds=61) if state.is_finished() else None
    return trial


RUNNING = _trial(TrialState.RUNNING, None, {}, {"spec": {"radix": 2}, "curve": [0.1]},
                 {"constraints": (0.0,)})
ENDINGS = {
    "complete": _trial(TrialState.COMPLETE, [0.93, 12345.0], {0: 0.5, 1: 0.93},
                       {"spec": {"radix": 2}, "curve": [0.1, 0.93]}, {"constraints": (0.0,)}),
    "infinite": _trial(TrialState.COMPLETE, [-math.inf, math.inf], {0: math.inf, 1: -math.inf},
                       {"spec": {"radix": 2}, "curve": [0.1]}, {"constraints": (1.5,)}),
    "nan steps, pruned": _trial(TrialState.PRUNED, None, {0: math.nan},
                                {"spec": {"radix": 2}, "curve": [math.nan]},
                                {"constraints": (0.0,)}),
    "failed": _trial(TrialState.FAIL, None, {}, {"spec": {"radix": 2}, "curve": [0.1],
                                                 "reason": "out of memory"},
                     {"constraints": (0.0,)}),
}


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _fields(t: FrozenTrial) -> dict:
    # Attributes are JSON in SQLite: tuples come back as lists.
    return {"state": t.state, "values": t.values, "params": t.params,
            "distributions": t.distributions, "user_attrs": optuna_json(t.user_attrs),
            "system_attrs": optuna_json(t.system_attrs),
            "intermediate_values": t.intermediate_values, "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete}


def optuna_json(attrs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"),
                               study_name="t", directions=["maximize", "minimize"])


def _reloaded(tmp_path: Path) -> list[FrozenTrial]:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}").trials


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_created_then_updated_trial_reads_back_as_given(tmp_path: Path, ending: str) -> None:
    study = _study(tmp_path)
    rdb = rdb_trial_writer.rdb_backend(study._storage)
    assert rdb is not None
    first = rdb_trial_writer.create_trial(rdb, study._study_id, RUNNING)
    assert _same(_fields(_reloaded(tmp_path)[0]), _fields(RUNNING))
    rdb_trial_writer.update_trial(rdb, first, RUNNING, ENDINGS[ending])
    second = rdb_trial_writer.create_trial(rdb, study._study_id, ENDINGS[ending])  # in one go
    assert second != first
    read = _reloaded(tmp_path)
    assert [t.number for t in read] == [0, 1]
    for trial in read:
        assert _same(_fields(trial), _fields(ENDINGS[ending])), ending


def test_optuna_keeps_writing_and_checking_the_study_afterwards(tmp_path: Path) -> None:
    study = _study(tmp_path)
    rdb = rdb_trial_writer.rdb_backend(study._storage)
    rdb_trial_writer.create_trial(rdb, study._study_id, ENDINGS["complete"])
    again = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = again.ask()
    assert trial.number == 1
    trial.suggest_int("radix", 0, 4)
    with pytest.raises(ValueError, match="Cannot set different log configuration"):
        trial.suggest_float("width", 0.1, 9.0)  # not log: our row's distribution is what Optuna checks
    again.tell(trial, [0.5, 10.0])
    assert [t.state for t in again.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert sorted(t.number for t in again.best_trials) == [0, 1]  # neither dominates


def test_updating_a_trial_the_storage_lacks_names_it(tmp_path: Path) -> None:
    study = _study(tmp_path)
    rdb = rdb_trial_writer.rdb_backend(study._storage)
    with pytest.raises(KeyError, match="trial id 999"):
        rdb_trial_writer.update_trial(rdb, 999, RUNNING, ENDINGS["complete"])
    assert _reloaded(tmp_path) == []  # nothing half-written


def test_only_rdb_storages_are_written_directly(tmp_path: Path) -> None:
    cached = optuna.create_study(storage=f"sqlite:///{tmp_path / 'a.db'}")._storage
    assert isinstance(rdb_trial_writer.rdb_backend(cached), optuna.storages.RDBStorage)
    assert rdb_trial_writer.rdb_backend(optuna.storages.InMemoryStorage()) is None
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    assert rdb_trial_writer.rdb_backend(journal) is None


def test_the_environment_can_turn_the_direct_writer_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(tmp_path)
    monkeypatch.setenv(WRITES_ENV, "optuna")
    assert StudyMirror.wrap(study)._rdb is None
    monkeypatch.delenv(WRITES_ENV)
    assert StudyMirror.wrap(study)._rdb is not None

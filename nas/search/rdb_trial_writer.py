"""Write one trial's changes to Optuna's RDB storage in one transaction with a handful of statements.

Optuna's `RDBStorage.create_new_trial(template_trial=...)` looks the trial up again and queries the
study's earlier distributions for every parameter, then flushes: ~60 ORM statements and 37-48 ms of
CPU per trial in our 24-parameter space (`bench/study_writes.py`; 6-7 ms here), which made the
study writes about half of the search's per-trial overhead
(docs/benchmarks.md, "Third round"). The search's trials come from its in-memory study, where
Optuna already checked every value and distribution, so here the rows are written as they are:
one insert of the trial, one count for its number, then its parameters, attributes, values and
intermediate values added together; an update writes only what changed.

The rows are Optuna's own ORM models (`optuna.storages._rdb.models`), built through their
constructors so that Optuna's conversions (UTC datetimes, inf/NaN encodings, JSON attributes)
apply. That module is private: `rdb_backend` returns None when it does not look as expected, and
the caller then uses Optuna's public API. `tests/test_study_mirror.py` checks that both paths
leave the in-memory study's trials in the durable one (this path its start and completion times
too); `tests/test_rdb_trial_writer.py` reads trials back through Optuna.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial

try:
    from optuna.storages._rdb import models
except ImportError:  # pragma: no cover - a future Optuna without this module
    models = None

_NEEDED = ("StudyModel", "TrialModel", "TrialParamModel", "TrialValueModel", "TrialIntermediateValueModel",
           "TrialUserAttributeModel", "TrialSystemAttributeModel")


def rdb_backend(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDB storage under `storage` (Optuna wraps it in a cache) if this module can write it."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage) or models is None:
        return None
    if not all(hasattr(models, name) for name in _NEEDED):
        return None
    return backend


def create_trial(rdb: optuna.storages.RDBStorage, study_id: int, trial: FrozenTrial) -> int:
    """Insert `trial` (any state) into study `study_id`; its durable trial id."""
    with _session(rdb) as session:
        # The lock Optuna takes so that concurrent writers number their trials apart.
        session.query(models.StudyModel).filter(
            models.StudyModel.study_id == study_id).with_for_update().one()
        row = models.TrialModel(study_id=study_id, number=None, state=trial.state,
                                datetime_start=trial.datetime_start,
                                datetime_complete=trial.datetime_complete)
        session.add(row)
        session.flush()  # assigns trial_id
        row.number = row.count_past_trials(session)
        session.add_all(
            models.TrialParamModel(
                trial_id=row.trial_id, param_name=name,
                param_value=trial.distributions[name].to_internal_repr(value),
                distribution_json=optuna.distributions.distribution_to_json(
                    trial.distributions[name]))
            for name, value in trial.params.items())
        _write_rows(session, row.trial_id, None, trial, lambda cls, key: {})
        return row.trial_id


def update_trial(rdb: optuna.storages.RDBStorage, trial_id: int, old: FrozenTrial,
                 new: FrozenTrial) -> None:
    """Write what changed from `old` (what the durable trial holds) to `new`. Parameters never
    change after creation; attributes, values, intermediate values, state and times may."""
    with _session(rdb) as session:
        row = session.get(models.TrialModel, trial_id)
        if row is None:
            raise KeyError(f"trial id {trial_id} is not in the study's storage")

        def existing(cls: type, key: str) -> dict[Any, Any]:
            return {getattr(r, key): r
                    for r in session.query(cls).filter(cls.trial_id == trial_id)}

        _write_rows(session, trial_id, old, new, existing)
        row.state = new.state
        row.datetime_start = new.datetime_start
        row.datetime_complete = new.datetime_complete


@contextlib.contextmanager
def _session(rdb: optuna.storages.RDBStorage) -> Iterator[Any]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    session = rdb.scoped_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _write_rows(session: Any, trial_id: int, old: FrozenTrial | None, new: FrozenTrial,
                existing: Callable[[type, str], dict[Any, Any]]) -> None:
    """Insert or update the attribute, intermediate-value and value rows in which `new` differs
    from `old` (None for a new trial); `existing(model, key column)` gives the trial's rows. The
    durable trial holds exactly `old`, so its rows are read only when a changed key is in `old`."""
    inter, value = models.TrialIntermediateValueModel, models.TrialValueModel
    tables = (  # model, key column, the field as a dict, the columns a value is stored in
        (models.TrialUserAttributeModel, "key", lambda t: t.user_attrs, _json_columns),
        (models.TrialSystemAttributeModel, "key", lambda t: t.system_attrs, _json_columns),
        (inter, "step", lambda t: t.intermediate_values,
         lambda v: dict(zip(("intermediate_value", "intermediate_value_type"),
                            inter.intermediate_value_to_stored_repr(v), strict=True))),
        (value, "objective", lambda t: dict(enumerate(t.values or ())),
         lambda v: dict(zip(("value", "value_type"), value.value_to_stored_repr(v),
                            strict=True))),
    )
    for cls, key_column, field, columns in tables:
        before = field(old) if old else {}
        diff = changes(before, field(new))
        rows = existing(cls, key_column) if any(k in before for k, _ in diff) else {}
        for key, item in diff:
            if key in rows:
                for column, stored in columns(item).items():
                    setattr(rows[key], column, stored)
            else:
                session.add(cls(trial_id=trial_id, **{key_column: key}, **columns(item)))


def _json_columns(value: Any) -> dict[str, str]:
    return {"value_json": json.dumps(value)}


def changes(old: dict[Any, Any], new: dict[Any, Any]) -> list[tuple[Any, Any]]:
    """The items of `new` that `old` lacks or holds with another value."""
    return [(k, v) for k, v in new.items() if k not in old or not _same(old[k], v)]


def _same(a: Any, b: Any) -> bool:
    """Equal, counting NaN as equal to NaN (nothing to write), also inside lists."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b

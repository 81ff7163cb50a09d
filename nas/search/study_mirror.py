"""An Optuna study sampled in memory and written to durable storage a few times per trial.

Optuna's RDB storage commits every suggested parameter, attribute and state change in its own
transaction: ~50 per trial in a 25-parameter space (tests/test_study_mirror.py counts them),
which made SQLite the largest share of the framework's per-trial time (docs/benchmarks.md,
"Framework overhead at scale"). The search samples, prunes and tells against an in-memory copy
instead, and `persist` writes a trial to the durable study in one transaction when it starts
(parameters, costs, spec) and in one more when it ends (its intermediate accuracies, constraint
values, state and values; one to three through Optuna's API).

On an RDB storage those transactions go through `nas.search.rdb_trial_writer`, a few statements each
(Optuna's own create takes ~60: it re-checks every parameter's distribution, which the in-memory
study has already done); other storages get Optuna's API. The start is written by a background
thread while the trial trains; every later write waits for it, so the durable study never
records a trial's end before its start. A driver killed in between leaves a trial out of the
durable study: `pad_to` re-aligns trial numbers on resume (see
`SearchController`), where trials.csv, written synchronously, still has the trial.

The durable study stays the record: a resumed search loads it back into memory, trials that were
running when the driver stopped are in it as RUNNING, and `analysis/` reads it as before. One
search driver writes a study at a time (as before: trial numbers are the driver's).
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.search import rdb_trial_writer
from nas.search.rdb_trial_writer import changes

WRITES_ENV = "NAS_STUDY_WRITES"  # "optuna": Optuna's API; anything else: the direct writer


class StudyMirror:
    """`study` is the in-memory working copy of `durable`; call `persist` after each change."""

    def __init__(self, durable: optuna.Study, direct: bool = True) -> None:
        """`direct`: write trials to an RDB storage in a few statements per transaction
        (`nas.search.rdb_trial_writer`); False, or a storage it cannot write, uses Optuna's API."""
        self.durable = durable
        self._rdb = rdb_trial_writer.rdb_backend(durable._storage) if direct else None
        self.study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), study_name=durable.study_name,
            sampler=durable.sampler, pruner=durable.pruner, directions=durable.directions,
        )
        memory, study_id = self.study._storage, self.study._study_id
        self._study_attrs = durable._storage.get_study_system_attrs(durable._study_id)
        for key, value in self._study_attrs.items():
            memory.set_study_system_attr(study_id, key, value)
        for key, value in durable.user_attrs.items():
            memory.set_study_user_attr(study_id, key, value)
        self._durable_id: dict[int, int] = {}  # memory trial id -> durable trial id
        self._written: dict[int, FrozenTrial] = {}  # memory trial id -> what durable holds
        for trial in durable.get_trials(deepcopy=False):
            copied = memory.create_new_trial(study_id, template_trial=trial)
            self._durable_id[copied] = trial._trial_id
            self._written[copied] = copy.deepcopy(trial)
        self._queue: queue.Queue[tuple[int, FrozenTrial, dict[str, Any]]] = queue.Queue()
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None
        self._queued: set[int] = set()  # trials whose start went to the writer

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Ray pickles the searcher that holds the controller): the writer thread
        and its queue stay behind, after a flush so nothing pending is left out."""
        self.flush()
        return {k: v for k, v in self.__dict__.items() if k not in ("_queue", "_writer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _queue=queue.Queue(), _writer=None)

    @staticmethod
    def wrap(study: optuna.Study) -> StudyMirror | None:
        """A mirror for a study on durable storage; None for an in-memory study (nothing to save).
        `NAS_STUDY_WRITES=optuna` in the environment writes through Optuna's API instead of
        `nas.search.rdb_trial_writer`: the way out should a database or Optuna release disagree with it."""
        if isinstance(study._storage, optuna.storages.InMemoryStorage):
            return None
        return StudyMirror(study, direct=os.environ.get(WRITES_ENV, "direct") != "optuna")

    def persist(self, trial_id: int) -> None:
        """Bring the durable copy of memory trial `trial_id` up to date (and the study's sampler
        state), in as few transactions as the change needs. A trial's start is written in the
        background; anything else waits for earlier writes, then writes before returning."""
        now = copy.deepcopy(self.study._storage.get_trial(trial_id))
        attrs = copy.deepcopy(self.study._storage.get_study_system_attrs(self.study._study_id))
        started = trial_id not in self._durable_id and trial_id not in self._queued
        if now.state == TrialState.RUNNING and started:
            self._check()
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="study-mirror",
                                                daemon=True)
                self._writer.start()
            self._queued.add(trial_id)
            self._queue.put((trial_id, now, attrs))
            return
        self.flush()
        self._write(trial_id, now, attrs)

    def flush(self) -> None:
        """Wait until every queued write is in the durable study; re-raise a failed write."""
        self._queue.join()
        self._check()

    def pad_to(self, count: int) -> list[int]:
        """Add FAIL trials until both studies hold `count` trials (numbers the driver handed out
        before it stopped, whose start never reached the durable study); their numbers."""
        memory, study_id = self.study._storage, self.study._study_id
        padded = list(range(len(memory.get_all_trials(study_id, deepcopy=False)), count))
        for _ in padded:  # trial numbers are assigned in order of creation
            trial_id = memory.create_new_trial(study_id)
            memory.set_trial_user_attr(
                trial_id, "lost", "the driver stopped before this trial reached the study")
            memory.set_trial_state_values(trial_id, TrialState.FAIL)
            self.persist(trial_id)
        return padded

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing the study to {self.durable._storage} failed: "
                               f"{error}") from error

    def _drain(self) -> None:
        while True:
            trial_id, now, attrs = self._queue.get()
            try:
                if self._error is None:
                    self._write(trial_id, now, attrs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the driver by _check
                self._error = err
            finally:
                self._queue.task_done()

    def _write(self, trial_id: int, now: FrozenTrial, attrs: dict[str, Any]) -> None:
        storage = self.durable._storage
        durable_id = self._durable_id.get(trial_id)
        if self._rdb is not None and durable_id is None:
            self._durable_id[trial_id] = rdb_trial_writer.create_trial(
                self._rdb, self.durable._study_id, now)
        elif self._rdb is not None:
            rdb_trial_writer.update_trial(self._rdb, durable_id, self._written[trial_id], now)
        elif durable_id is None:
            self._durable_id[trial_id] = storage.create_new_trial(self.durable._study_id,
                                                                  template_trial=now)
        else:
            old = self._written[trial_id]
            for key, value in changes(old.user_attrs, now.user_attrs):
                storage.set_trial_user_attr(durable_id, key, value)
            for key, value in changes(old.system_attrs, now.system_attrs):
                storage.set_trial_system_attr(durable_id, key, value)
            for step, value in changes(old.intermediate_values, now.intermediate_values):
                storage.set_trial_intermediate_value(durable_id, step, value)
            if now.state != old.state or now.values != old.values:
                storage.set_trial_state_values(durable_id, now.state, now.values)
        self._written[trial_id] = now
        for key, value in changes(self._study_attrs, attrs):
            storage.set_study_system_attr(self.durable._study_id, key, value)
        self._study_attrs = attrs


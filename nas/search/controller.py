"""The search's brain, free of Ray: proposes architectures with Optuna, enforces constraints from
static costs, consults the pruner at every epoch report, and records every trial.

`trials/ray_runner.py` adapts this to Ray Tune's Searcher/Scheduler callbacks; tests can drive it
directly. The controller asks, reports to and tells the durable study itself (each change is one
journal append or database commit), so the study holds every trial from its start, as trials.csv
does. Optuna refuses `Trial.report` in multi-objective studies, so there intermediate accuracies
go to a user attribute (see `nas.search.pruner`); a pruned trial is told to Optuna as PRUNED
(never COMPLETE with a partial accuracy), so it never enters the sampler's model or the front as
a finished value.

If the study (or trials.csv) stops accepting writes, no new trial starts, running ones are
stopped, what finished stays recorded in trials.csv, and `failure` says why (the CLI ends the
search with it); `--resume` later tells the study what it missed (`nas.search.recovery`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from nas.experiment import (
    STATES,
    CsvCache,
    ExperimentConfig,
    ExperimentDir,
    TrialRecord,
    study_location,
    write_trials_csv,
)
from nas.search.objectives import Objective
from nas.search.pareto import pareto_mask
from nas.search.pruner import INTERMEDIATE_ATTR
from nas.search.recovery import (
    ESTIMATOR_ATTR,
    INTERRUPTED,
    INVALID,
    REASON_ATTR,
    SECONDS_ATTR,
    is_interrupted,
    recover,
    trial_id_of,
)
from nas.search.strategy import record_violations
from search_spaces.cli import one_line
from search_spaces.errors import UserError
from search_spaces.resnest_space import ResNeStSpace
from search_spaces.spec import ArchSpec
from trials.trial import EPOCH_KEYS

# Constraint flag -> cost column it bounds.
CONSTRAINT_COLUMNS = {"max_macs": "macs", "max_params": "params", "max_latency_ms": "latency_ms"}
MAX_INFEASIBLE_IN_A_ROW = 500
EPOCHS_ATTR = "epochs"  # a finished trial's trained epochs, for optuna-dashboard
STATUS_EVERY_S = 30.0  # the longest silence while trials run (`status_of_running`)
# What a storage that stops accepting writes raises: the journal's file, or a database.
STORAGE_ERRORS = (OSError, optuna.exceptions.StorageInternalError)

CostFn = Callable[[ArchSpec], dict[str, float]]
# (trial id, adapted spec, its static costs, checkpoint to resume from) -> the trial's config.
TrainConfigFn = Callable[[str, ArchSpec, dict[str, float], str | None], dict[str, Any]]


def adapt_to_task(spec: ArchSpec, config: ExperimentConfig, regime: str) -> ArchSpec:
    """A named point re-targeted to the search's task: classes, channels and input regime."""
    return spec.replace(
        num_classes=config.num_classes, in_channels=config.in_channels, input_regime=regime
    )


class SearchController:
    """Bookkeeping and decisions for one experiment; every method runs in the driver process."""

    def __init__(
        self,
        config: ExperimentConfig,
        exp: Path,
        study: optuna.Study,
        space: ResNeStSpace,
        objectives: tuple[Objective, ...],
        cost_fn: CostFn,
        trial_config_fn: TrainConfigFn,
        seed_specs: list[ArchSpec] = (),
        records: list[TrialRecord] = (),
        log: Callable[[str], None] = print,
    ) -> None:
        self.study = study
        self.config, self.exp, self.space = config, exp, space
        self.objectives, self.cost_fn, self.trial_config_fn, self.log = (
            objectives, cost_fn, trial_config_fn, log
        )
        self.live: dict[str, optuna.Trial] = {}
        self.pruned: dict[str, str] = {}
        self.infeasible: dict[str, str] = {}  # broke a constraint on its worker: why
        self._latency_on_worker = config.latency.get("source") == "worker"
        # How new trials are scored (`nas.experiment.ESTIMATORS`): a supernet search's
        # fine-tuning phase trains its trials (`nas.search.estimator`).
        self.estimator = config.estimator
        self.started = time.monotonic()
        self._status_at = self.started  # when status_of_running last gave a line
        self.stopped = False
        self.failure: str | None = None  # why storage stopped the search
        self._csv_cache: CsvCache = {}  # trials.csv lines of unchanged records
        self._front: list[TrialRecord] | None = None  # recomputed when a trial completes
        recovered = recover(study, exp, list(records),
                            lambda r: self._values(r.accuracy or 0.0, r.costs),
                            study_location(exp, config.storage))
        self.records: dict[str, TrialRecord] = {r.trial_id: r for r in recovered.records}
        self.rebuilt = recovered.rebuilt  # trials.csv rows rebuilt from the study
        # Interrupted architectures run first and do not count against the budget again.
        self.reruns = len(recovered.reruns)
        done = {r.spec.spec_hash for r in self.records.values()}
        self.queue: list[tuple[ArchSpec, str | None]] = [*recovered.reruns, *(
            (s, None) for s in seed_specs if s.spec_hash not in done)]
        # Seeded architectures (the anchors and --seed-points) always train to the last epoch:
        # they are few and cheap, and an early rung's noisy accuracy must not drop the points
        # they are there to give the front. By spec, so a resumed re-run keeps the exemption.
        self.unpruned = frozenset(s.spec_hash for s in seed_specs)
        if self.records:
            write_trials_csv(self.exp, list(self.records.values()), self._csv_cache)

    # Budget -----------------------------------------------------------------------------------
    @property
    def launched(self) -> int:
        """Architectures started (an interrupted trial's re-run is the same architecture)."""
        return sum(r.state != "INFEASIBLE" and not is_interrupted(r)
                   for r in self.records.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def budget_left(self) -> bool:
        """Another trial may start: interrupted architectures still to re-run, or trials and
        time left."""
        return (
            not self.stopped
            and (self.reruns > 0 or self.launched < self.config.trials)
            and self.elapsed < self.config.time_budget_s
        )

    # Proposals --------------------------------------------------------------------------------
    def next_trial(self) -> tuple[str, dict[str, Any]] | None:
        """The next architecture to train and its trainable config, or None when the budget is
        spent (or storage failed). Architectures violating a constraint are recorded INFEASIBLE
        and told to the sampler."""
        try:
            return self._next_trial()
        except STORAGE_ERRORS as err:
            self._storage_failed(err)
            return None

    def _next_trial(self) -> tuple[str, dict[str, Any]] | None:
        for _ in range(MAX_INFEASIBLE_IN_A_ROW):
            if not self.budget_left():
                return None
            if self.reruns:  # the queue's first entries are the interrupted architectures
                self.reruns -= 1
            trial, spec, resume_from = self._propose()
            trial_id = trial_id_of(trial.number)
            trial.set_user_attr("spec", spec.to_json())
            trial.set_user_attr("tag", spec.tag)
            if self.estimator != "train":  # recovery reads a missing attribute as train
                trial.set_user_attr(ESTIMATOR_ATTR, self.estimator)
            how = {"estimator": self.estimator}
            try:
                costs = self.cost_fn(spec)
            except UserError as err:  # the builder refuses a point the space proposed
                reason = f"{INVALID}: {err}"
                trial.set_user_attr(REASON_ATTR, reason)
                self.study.tell(trial, state=TrialState.FAIL)
                self._record(TrialRecord(trial_id, trial.number, "INFEASIBLE", spec,
                                         reason=reason, **how))
                continue
            violations = self._violations(costs)
            for key, value in costs.items():
                trial.set_user_attr(key, value)
            # Optuna keeps a trial's first constraints: with the latency still to come from the
            # worker, they are set when it arrives (`_record_latency`).
            later = self._latency_on_worker and not any(v > 0 for v in violations)
            record_violations(trial, violations,
                              constrained=bool(self.config.constraints) and not later)
            if any(v > 0 for v in violations):
                reason = "; ".join(self._violation_text(costs))
                trial.set_user_attr(REASON_ATTR, reason)
                self.study.tell(trial, self._values(0.0, costs))
                self._record(TrialRecord(trial_id, trial.number, "INFEASIBLE", spec, costs,
                                         reason=reason, **how))
                continue
            self.live[trial_id] = trial
            self._record(TrialRecord(trial_id, trial.number, "RUNNING", spec, costs, **how))
            return trial_id, self.trial_config_fn(trial_id, spec, costs, resume_from)
        self.log(
            f"stopping: {MAX_INFEASIBLE_IN_A_ROW} proposals in a row violated the constraints"
        )
        self.stopped = True
        return None

    def _propose(self) -> tuple[optuna.Trial, ArchSpec, str | None]:
        if self.queue:
            spec, resume_from = self.queue.pop(0)
            if self.space.contains(spec):
                self.study.enqueue_trial(self.space.params_of(spec), skip_if_exists=False)
                trial = self.study.ask()
                return trial, self._task(self.space.suggest(trial)), resume_from
            return self.study.ask(), spec, resume_from  # Outside the space: evaluated as given.
        trial = self.study.ask()
        return trial, self._task(self.space.suggest(trial)), None

    def _task(self, spec: ArchSpec) -> ArchSpec:
        return spec.replace(num_classes=self.config.num_classes,
                            in_channels=self.config.in_channels)

    def _violations(self, costs: dict[str, float]) -> list[float]:
        """Relative excess per constraint (<= 0 satisfied), Optuna's constraint convention."""
        out = [0.0]
        for flag, limit in self.config.constraints.items():
            value = costs.get(CONSTRAINT_COLUMNS[flag])
            if value is not None:
                out.append(value / limit - 1.0)
        return out

    def _violation_text(self, costs: dict[str, float]) -> list[str]:
        return [
            f"{CONSTRAINT_COLUMNS[flag]} {costs[CONSTRAINT_COLUMNS[flag]]:.4g} > {flag} {limit:.4g}"
            for flag, limit in self.config.constraints.items()
            if costs.get(CONSTRAINT_COLUMNS[flag], 0) > limit
        ]

    def _values(self, accuracy: float, costs: dict[str, float]) -> list[float]:
        return [accuracy if o.name == "accuracy" else costs[o.column] for o in self.objectives]

    # Reports ----------------------------------------------------------------------------------
    def on_result(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Record one epoch (or the latency a worker measured before training); True when the
        pruner says stop (or storage failed)."""
        try:
            self._record_latency(trial_id, result)
            epoch = self._record_epoch(trial_id, result)
            if self.failure is not None:
                return True
            if epoch is None or epoch >= self.config.epochs:
                return False
            if self.records[trial_id].spec.spec_hash in self.unpruned:
                return False
            if self.study.pruner.prune(self.study, self._frozen(self.live[trial_id].number)):
                self.pruned[trial_id] = f"pruned at epoch {epoch} by {self.config.pruner}"
                return True
        except STORAGE_ERRORS as err:
            self._storage_failed(err)
            return True
        return False

    def _record_latency(self, trial_id: str, result: dict[str, Any]) -> None:
        """A worker's measured latency joins the trial's costs (trials.csv, the study's user
        attribute the pruner ranks by); one that breaks --max-latency-ms marks it INFEASIBLE."""
        record, trial = self.records.get(trial_id), self.live.get(trial_id)
        if record is None or trial is None or result.get("latency_ms") is None:
            return
        value = float(result["latency_ms"])
        if record.costs.get("latency_ms") != value:
            costs = {**record.costs, "latency_ms": value}
            self.records[trial_id] = replace(record, costs=costs)
            trial.set_user_attr("latency_ms", value)
            violations = self._violations(costs)
            record_violations(trial, violations, constrained=bool(self.config.constraints))
            self._record(self.records[trial_id])
        if result.get("infeasible"):
            self.infeasible[trial_id] = str(result["infeasible"])

    def _record_epoch(self, trial_id: str, result: dict[str, Any]) -> int | None:
        """Add an epoch's result to a live trial's curve and its study trial; the epoch, or None
        for a result that is no epoch (a failure report, an unknown trial)."""
        record = self.records.get(trial_id)
        trial = self.live.get(trial_id)
        if record is None or trial is None or "epoch" not in result or result.get("failed"):
            return None
        epoch = {k: result[k] for k in EPOCH_KEYS if result.get(k) is not None}
        if epoch in record.curve:  # passed again (a trial's last result): already recorded
            return int(epoch["epoch"])
        reported = {e["epoch"] for e in record.curve}
        curve = [e for e in record.curve if e["epoch"] < epoch["epoch"]] + [epoch]
        self.records[trial_id] = replace(record, curve=tuple(curve))
        if len(self.objectives) > 1:
            trial.set_user_attr(INTERMEDIATE_ATTR, {
                str(e["epoch"]): e.get("val_top1") for e in curve
            })
        elif epoch["epoch"] not in reported:  # Optuna keeps a step's first report (and warns)
            trial.report(float(result.get("val_top1", float("nan"))), int(epoch["epoch"]))
        return int(epoch["epoch"])

    def on_complete(
        self, trial_id: str, result: dict[str, Any] | None, error: str | None = None
    ) -> None:
        """Close a trial: COMPLETE, PRUNED (pruner or time budget) or FAIL, in Optuna and the csv.
        A final result not passed to `on_result` yet is recorded first."""
        if trial_id not in self.live or trial_id not in self.records:
            return
        if result:
            self._guard(lambda: self._record_latency(trial_id, result))
            self._guard(lambda: self._record_epoch(trial_id, result))
        trial = self.live.pop(trial_id)
        record = self.records[trial_id]
        seconds = float((result or {}).get("time_total_s", 0.0) or 0.0)
        failure = error or (result or {}).get("failed")
        if failure:
            state, reason = "FAIL", str(failure)
        elif trial_id in self.infeasible:  # measured on its worker, never trained
            state, reason = "INFEASIBLE", self.infeasible.pop(trial_id)
        elif record.epochs >= self.config.epochs or (record.estimator != "train"
                                                     and record.curve):
            state, reason = "COMPLETE", ""  # trained to the end, or estimated
        elif self.failure is not None and trial_id not in self.pruned:  # cut short, not pruned
            state, reason = "FAIL", f"{INTERRUPTED}: the study stopped accepting writes"
        else:
            state = "PRUNED"
            reason = self.pruned.get(trial_id, f"stopped at epoch {record.epochs}")

        def tell() -> None:
            trial.set_user_attr(REASON_ATTR, reason)
            trial.set_user_attr(SECONDS_ATTR, seconds)
            trial.set_user_attr(EPOCHS_ATTR, record.epochs)
            if state == "COMPLETE":
                self.study.tell(trial, self._values(record.accuracy, record.costs))
            elif state == "INFEASIBLE":  # as a driver-refused proposal is told
                self.study.tell(trial, self._values(0.0, record.costs))
            else:
                self.study.tell(trial, state=getattr(TrialState, state))

        self._guard(tell)  # trials.csv records the trial even if the study missed its end
        self._guard(lambda: self._record(replace(record, state=state, reason=reason,
                                                 seconds=seconds,
                                                 checkpoint=self._checkpoint_of(trial_id))))
        self._progress_line(self.records[trial_id])

    def close_live(self, reason: str) -> None:
        """Close trials Ray stopped without a final report (time budget, shutdown) as PRUNED;
        after a storage failure as interrupted, so `--resume` runs them again."""
        for trial_id in list(self.live):
            if self.failure is None:
                self.pruned.setdefault(trial_id, reason)
            self.on_complete(trial_id, None)

    # Persistence and progress ----------------------------------------------------------------
    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        """A running trial as the study holds it now (what a pruner decides on)."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return next(t for t in running if t.number == number)

    def _record(self, record: TrialRecord) -> None:
        old = self.records.get(record.trial_id)
        if "COMPLETE" in (record.state, old.state if old else None):
            self._front = None
        self.records[record.trial_id] = record
        write_trials_csv(self.exp, list(self.records.values()), self._csv_cache)

    def _guard(self, write: Callable[[], Any]) -> None:
        """Run a write to the study or trials.csv; a storage failure stops the search."""
        try:
            write()
        except STORAGE_ERRORS as err:
            self._storage_failed(err)

    def _storage_failed(self, err: Exception) -> None:
        """No new trial starts and running ones stop; `failure` names the path that failed."""
        self.stopped = True
        if self.failure is None:
            where = getattr(err, "filename", None) or study_location(self.exp,
                                                                     self.config.storage)
            detail = getattr(err, "strerror", None) or one_line(err)
            self.failure = (f"the search stopped: {where} stopped accepting writes "
                            f"({type(err).__name__}: {detail}); every trial that finished is "
                            "in trials.csv; make it writable and run again with --resume")

    def _checkpoint_of(self, trial_id: str) -> str | None:
        checkpoint = ExperimentDir(self.exp).trial(trial_id).checkpoint
        return str(checkpoint) if checkpoint.exists() else None

    def front(self, estimator: str | None = None) -> list[TrialRecord]:
        """Completed trials on the Pareto front of the experiment's objectives (with
        `estimator`, of the trials scored that way only)."""
        if estimator is not None:
            return self._compute_front(estimator)
        if self._front is None:
            self._front = self._compute_front()
        return list(self._front)

    def _compute_front(self, estimator: str | None = None) -> list[TrialRecord]:
        done = [r for r in self.records.values() if r.state == "COMPLETE"
                and estimator in (None, r.estimator)]
        if not done:
            return []
        values = np.array([self._values(r.accuracy, r.costs) for r in done], dtype=float)
        mask = pareto_mask(values, [o.maximize for o in self.objectives])
        front = [r for r, keep in zip(done, mask, strict=True) if keep]
        return sorted(front, key=lambda r: [r.costs.get(o.column, 0) for o in self.objectives
                                            if not o.maximize] + [-(r.accuracy or 0)])

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in self.records.values():
            out[r.state] += 1
        return out

    def status_line(self) -> str:
        c = self.counts()
        done = [r.best_accuracy for r in self.records.values() if r.state == "COMPLETE"]
        best = f"{max(done):.1%}" if done else "-"
        left = max(0.0, self.config.time_budget_s - self.elapsed)
        return (
            f"done {c['COMPLETE']} running {c['RUNNING']} pruned {c['PRUNED']} "
            f"failed {c['FAIL']} infeasible {c['INFEASIBLE']} | best {best} | "
            f"front {len(self.front())} | {_clock(self.elapsed)} elapsed, {_clock(left)} left"
        )

    def status_of_running(self, now: float | None = None) -> str | None:
        """Each running trial's finished epochs and the time left, as one line, at most every
        STATUS_EVERY_S on the driver's clock (`now`, default `time.monotonic()`); None in between,
        so a caller may ask on every loop of its own."""
        now = time.monotonic() if now is None else now
        if now - self._status_at < STATUS_EVERY_S:
            return None
        self._status_at = now
        running = [f"{tid} epoch {self.records[tid].epochs}/{self.config.epochs}"
                   for tid in self.live if tid in self.records]
        elapsed = now - self.started
        left = max(0.0, self.config.time_budget_s - elapsed)
        return (f"  running {', '.join(running) or 'none'} | {_clock(elapsed)} elapsed, "
                f"{_clock(left)} left")

    def _progress_line(self, r: TrialRecord) -> None:
        acc = f"{r.accuracy:.1%}" if r.accuracy is not None else "-"
        macs = r.costs.get("macs")
        cost = f"{macs / 1e6:.2f}M MACs" if macs is not None else ""
        why = f" ({r.reason})" if r.reason else ""
        finished = sum(x.state in ("COMPLETE", "PRUNED", "FAIL") and not is_interrupted(x)
                       for x in self.records.values())
        self.log(
            f"[{finished}/{self.config.trials}] {r.trial_id} {r.state:<8} {r.spec.tag} "
            f"acc {acc} {cost} {r.epochs} ep {r.seconds:.0f}s{why}"
        )
        self.log(f"  {self.status_line()}")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"

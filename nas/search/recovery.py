"""What a resumed search makes of the records a stopped driver left.

The study and trials.csv are cross-checked (files of two different experiments are refused),
trials the study finished but trials.csv does not show (a missing or stale trials.csv) are
rebuilt from the study, trials left RUNNING are closed as FAIL, and every architecture whose
trial was cut short, on this resume or an earlier one, is queued to run again.

The study holds per trial what the controller stored in it: spec, tag and static costs (user
attributes), the accuracy reported at each epoch, why the trial ended and how long it ran, and
its values; each trial's run directory holds its learning curve (metrics.jsonl).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.experiment import COST_KEYS, STATES, ExperimentDir, TrialRecord
from nas.search.pruner import INTERMEDIATE_ATTR
from nas.search.strategy import VIOLATIONS_ATTR
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec
from trials.trial import EPOCH_KEYS

# User attributes the controller sets on a trial before it tells the study how the trial ended.
REASON_ATTR = "reason"
SECONDS_ATTR = "seconds"
ESTIMATOR_ATTR = "estimator"  # how the accuracy was obtained (`nas.experiment.ESTIMATORS`)
# Reasons of records the search wrote itself; an interrupted trial is not a finished one.
INTERRUPTED = "interrupted (driver stopped)"
REQUEUED = f"{INTERRUPTED}; re-queued on resume"
INVALID = "invalid architecture"
FINISHED = ("COMPLETE", "PRUNED", "FAIL", "INFEASIBLE")

Rerun = tuple[ArchSpec, str | None]  # an interrupted architecture, the checkpoint it continues


def trial_id_of(number: int) -> str:
    return f"t{number:04d}"


def is_interrupted(record: TrialRecord) -> bool:
    """A trial cut short by its driver's end: its architecture runs again as a new trial."""
    return record.state == "FAIL" and record.reason.startswith(INTERRUPTED)


@dataclass(frozen=True)
class Recovered:
    """The records after recovery, the architectures to run again first, and what was rebuilt."""

    records: tuple[TrialRecord, ...]
    reruns: tuple[Rerun, ...]
    rebuilt: int


def recover(study: optuna.Study, exp: Path, records: Sequence[TrialRecord],
            values: Callable[[TrialRecord], list[float]], where: str) -> Recovered:
    """Cross-check `records` (trials.csv) with `study`, then close what the dead driver left open
    (every check runs before the first write). `values` gives a record's objective values;
    `where` names the study in messages."""
    trials = study.get_trials()  # a copy: the loop below changes the study
    check_same_experiment(trials, records, exp, where)
    by_number = {r.number: r for r in records}
    rebuilt = 0
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.tell(study.ask(), state=TrialState.FAIL)  # enqueued, never asked: no later ask
    for trial in trials:
        record = by_number.get(trial.number)
        if trial.state == TrialState.RUNNING:
            if record is not None and record.state in FINISHED:  # the study missed its end
                _tell(study, trial.number, record, values)
                continue
            study.tell(trial.number, state=TrialState.FAIL)
            again = record or record_from_trial(exp, trial)
            if again is not None:
                by_number[trial.number] = replace(again, state="FAIL", reason=REQUEUED)
                rebuilt += record is None
        elif trial.state != TrialState.WAITING and (record is None or record.state == "RUNNING"):
            again = record_from_trial(exp, trial)
            if again is not None:
                by_number[trial.number] = again
                rebuilt += 1
    final = sorted(by_number.values(), key=lambda r: r.number)
    return Recovered(tuple(final), tuple(_reruns(exp, final)), rebuilt)


def check_same_experiment(trials: Sequence[FrozenTrial], records: Sequence[TrialRecord],
                          exp: Path, where: str) -> None:
    """Refuse a trials.csv and a study of two different experiments (before anything writes)."""
    numbers = {t.number: t for t in trials}
    csv = ExperimentDir(exp).trials_csv
    strays = [r.trial_id for r in records if r.number not in numbers]
    if strays:
        raise UserError(f"{csv} holds trials the study {where} does not ({', '.join(strays[:5])}"
                        f"{', ...' if len(strays) > 5 else ''}): they are not the same "
                        "experiment's; restore the study or start a new experiment")
    for r in records:
        stored = numbers[r.number].user_attrs.get("spec")
        if isinstance(stored, str) and ArchSpec.from_json(stored) != r.spec:
            raise UserError(f"{csv} and the study {where} disagree on the architecture of "
                            f"{r.trial_id}: they are not the same experiment's")


def _tell(study: optuna.Study, number: int, record: TrialRecord,
          values: Callable[[TrialRecord], list[float]]) -> None:
    """Tell the study how a trial ended, as trials.csv recorded it."""
    if record.state == "COMPLETE" or (record.state == "INFEASIBLE" and record.costs
                                      and not record.reason.startswith(INVALID)):
        study.tell(number, values(record))
    else:
        study.tell(number, state=TrialState.PRUNED if record.state == "PRUNED"
                   else TrialState.FAIL)


def _reruns(exp: Path, records: Sequence[TrialRecord]) -> list[Rerun]:
    """Interrupted architectures no later trial ran again, each with the newest checkpoint any
    of its interrupted attempts left."""
    out: list[Rerun] = []
    for index, record in enumerate(records):
        if not is_interrupted(record) or any(
                r.spec == record.spec and r.state != "INFEASIBLE" for r in records[index + 1:]):
            continue
        attempts = [r for r in records[:index + 1] if r.spec == record.spec and is_interrupted(r)]
        checkpoints = [ExperimentDir(exp).trial(r.trial_id).checkpoint for r in attempts]
        found = [str(c) for c in reversed(checkpoints) if c.is_file()]
        out.append((record.spec, found[0] if found else None))
    return out


def record_from_trial(exp: Path, trial: FrozenTrial) -> TrialRecord | None:
    """A trial's record rebuilt from the study and its run directory; None for a trial asked but
    never proposed (no spec stored)."""
    attrs = trial.user_attrs
    if not isinstance(attrs.get("spec"), str):
        return None
    trial_id = trial_id_of(trial.number)
    reason = str(attrs.get(REASON_ATTR, ""))
    state = trial.state.name
    if state == "COMPLETE" and any(v > 0 for v in attrs.get(VIOLATIONS_ATTR) or ()):
        state = "INFEASIBLE"
    elif state == "FAIL" and reason.startswith(INVALID):
        state = "INFEASIBLE"
    elif state == "FAIL" and REASON_ATTR not in attrs:  # closed by an earlier recovery
        reason = INTERRUPTED
    elif state not in STATES:
        state = "FAIL"
    if state == "PRUNED" and not reason:
        reason = f"stopped at epoch {max(_reported(trial), default=0)}"
    run = ExperimentDir(exp).trial(trial_id)
    return TrialRecord(
        trial_id, trial.number, state, ArchSpec.from_json(attrs["spec"]),
        costs={k: float(attrs[k]) for k in COST_KEYS if isinstance(attrs.get(k), (int, float))},
        curve=() if state == "INFEASIBLE" else _curve(run.metrics, _reported(trial)),
        reason=reason, seconds=float(attrs.get(SECONDS_ATTR) or 0.0),
        checkpoint=str(run.checkpoint) if run.checkpoint.is_file() else None,
        estimator=str(attrs.get(ESTIMATOR_ATTR) or "train"),
    )


def _reported(trial: FrozenTrial) -> dict[int, Any]:
    """Epoch -> accuracy the trial reported (a user attribute in multi-objective studies)."""
    attr = trial.user_attrs.get(INTERMEDIATE_ATTR)
    pairs = attr.items() if isinstance(attr, dict) else trial.intermediate_values.items()
    return {int(epoch): value for epoch, value in pairs}


def _curve(metrics: Path, reported: dict[int, Any]) -> tuple[dict[str, Any], ...]:
    """The reported epochs' records from the trial's metrics file (the keys a search records),
    or the study's accuracies alone where that file has none."""
    epochs: dict[int, dict[str, Any]] = {}
    try:
        for line in metrics.read_text().splitlines():
            entry = json.loads(line)
            epochs[int(entry["epoch"])] = {k: entry[k] for k in EPOCH_KEYS
                                           if entry.get(k) is not None}
    except (OSError, ValueError, KeyError, TypeError):
        epochs = {}
    return tuple(epochs.get(e) or {"epoch": e, "val_top1": v} for e, v in sorted(reported.items())
                 if v is not None or e in epochs)

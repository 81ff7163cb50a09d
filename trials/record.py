"""A trial as an immutable record: spec, costs, learning curve, state and reason.

`analysis/` and `nas.export` read only these records (via `trials.csv`) and the Optuna study, never
Ray internals, so this is the contract between the search and everything after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from search_spaces.spec import ArchSpec

STATES = ("COMPLETE", "PRUNED", "FAIL", "INFEASIBLE", "RUNNING")
# Static costs a record may carry; all are "lower is better".
COST_KEYS = ("params", "macs", "latency_ms", "peak_memory_bytes")
CSV_COLUMNS = (
    "trial_id", "number", "state", "reason", "tag", "spec_hash", "spec",
    "params", "macs", "latency_ms", "peak_memory_bytes", "accuracy", "best_accuracy", "epochs",
    "seconds", "checkpoint", "curve",
)


@dataclass(frozen=True)
class TrialRecord:
    """One architecture evaluated (or refused) by a search.

    `curve` holds one dict per finished epoch (`epoch`, `train_loss`, `val_top1`, ...); accuracy is
    the last epoch's validation top-1 in [0, 1]. `checkpoint` is the path of the final weights
    (a `checkpoint.pt` written by `trials.training`), when the trial trained.
    """

    trial_id: str
    number: int
    state: str
    spec: ArchSpec
    costs: dict[str, float] = field(default_factory=dict)
    curve: tuple[dict[str, Any], ...] = ()
    reason: str = ""
    seconds: float = 0.0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")
        object.__setattr__(self, "curve", tuple(self.curve))

    @property
    def accuracy(self) -> float | None:
        return self.curve[-1].get("val_top1") if self.curve else None

    @property
    def best_accuracy(self) -> float | None:
        values = [e["val_top1"] for e in self.curve if e.get("val_top1") is not None]
        return max(values) if values else None

    @property
    def epochs(self) -> int:
        return int(self.curve[-1]["epoch"]) if self.curve else 0

    def to_row(self) -> dict[str, Any]:
        """A flat dict with `CSV_COLUMNS` keys (spec and curve as JSON text)."""
        return {
            "trial_id": self.trial_id,
            "number": self.number,
            "state": self.state,
            "reason": self.reason,
            "tag": self.spec.tag,
            "spec_hash": self.spec.spec_hash,
            "spec": self.spec.to_json(),
            **{k: self.costs.get(k) for k in COST_KEYS},
            "accuracy": self.accuracy,
            "best_accuracy": self.best_accuracy,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "checkpoint": self.checkpoint or "",
            "curve": json.dumps(list(self.curve), sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrialRecord:
        """Inverse of `to_row` (accepts the strings/NaNs a CSV reader gives back)."""

        def number_or_none(value: Any) -> float | None:
            if value is None or value == "":
                return None
            value = float(value)
            return None if value != value else value

        costs = {k: v for k in COST_KEYS if (v := number_or_none(row.get(k))) is not None}
        checkpoint = row.get("checkpoint")
        if not isinstance(checkpoint, str) or not checkpoint:
            checkpoint = None
        reason = row.get("reason")
        return cls(
            trial_id=str(row["trial_id"]),
            number=int(row["number"]),
            state=str(row["state"]),
            spec=ArchSpec.from_json(row["spec"]),
            costs=costs,
            curve=tuple(json.loads(row["curve"])) if row.get("curve") else (),
            reason=reason if isinstance(reason, str) else "",
            seconds=number_or_none(row.get("seconds")) or 0.0,
            checkpoint=checkpoint,
        )

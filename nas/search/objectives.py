"""Search objectives: names users type, the record field each reads, and its direction."""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.errors import UserError


@dataclass(frozen=True)
class Objective:
    name: str
    column: str  # column of trials.csv / key of TrialRecord.costs
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


OBJECTIVES: dict[str, Objective] = {
    "accuracy": Objective("accuracy", "accuracy", True),
    "macs": Objective("macs", "macs", False),
    "params": Objective("params", "params", False),
    "latency": Objective("latency", "latency_ms", False),
    "memory": Objective("memory", "peak_memory_bytes", False),
}


def parse_objectives(text: str | list[str] | tuple[str, ...]) -> tuple[Objective, ...]:
    """`accuracy,macs` -> objectives. Accuracy must be one: costs alone need no training."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise UserError(
            f"unknown objective {unknown[0]!r}; valid objectives: {', '.join(OBJECTIVES)}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"objectives must not repeat, got {','.join(names)}")
    if "accuracy" not in names:
        raise UserError(
            "objectives must include accuracy (costs are known without training); "
            f"got {','.join(names) or 'nothing'}"
        )
    return tuple(OBJECTIVES[n] for n in names)

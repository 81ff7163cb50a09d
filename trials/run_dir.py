"""The files of one training run: a search trial's `OUT/NAME/trials/<id>/` and the directory of
`python -m trials.train --out DIR` share this layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run directory (nothing is created by naming them)."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def latency(self) -> Path:
        """A search trial's latency, measured on its worker before training (with how, where)."""
        return self.path / "latency.json"

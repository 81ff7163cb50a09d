"""A latency table: the measured latency of every distinct part of a space on one device, with
one backend's settings, and the prediction of a whole network from it.

prediction(spec) = constant_ms + sum of the table's entries for the spec's parts (stem, every
block, head; repeats counted each time). Each entry is the part's own measured latency (the
median over the profile's passes of the figure `nas.models.latency` defines) minus
`overhead_ms`, the same backend's latency of an empty module at the stem's input (the fixed cost
of one call that a whole network pays once, not once per part); `constant_ms` is fitted on
networks kept apart from the validation set (the median of measured minus summed parts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas.latency.parts import parts_of
from nas.models.latency import LatencySettings
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec

FORMAT = "resnest-nas latency table"
VERSION = 1


@dataclass(frozen=True)
class LatencyTable:
    """Parts' latencies (ms, net of `overhead_ms`) of one space at one input on one device."""

    space: str
    preset: str
    image_size: int
    num_classes: int
    in_channels: int
    settings: LatencySettings
    parts: dict[str, float]
    overhead_ms: float = 0.0
    constant_ms: float = 0.0
    complete: bool = True  # every part the space can produce was measured
    machine: dict[str, Any] = field(default_factory=dict)
    fit: tuple[dict[str, Any], ...] = ()  # networks the constant was fitted on
    validation: dict[str, Any] = field(default_factory=dict)  # held-out networks and errors

    def predict(self, spec: ArchSpec) -> float:
        """Predicted milliseconds per forward of `spec`'s network (see the module docstring);
        a part the table lacks is a UserError naming it."""
        return self.constant_ms + self.parts_sum(spec)

    def parts_sum(self, spec: ArchSpec) -> float:
        total = 0.0
        for part in parts_of(spec, self.image_size):
            value = self.parts.get(part.key)
            if value is None:
                raise UserError(f"latency table lacks part {part.key}, which {spec.tag} needs "
                                f"({self.describe_for()}); profile the whole space (without "
                                "--only-sampled) on the target device")
            total += value
        return total

    def describe_for(self) -> str:
        return (f"space {self.space} preset {self.preset}, {self.image_size} px, "
                f"{self.num_classes} classes, {self.in_channels} channels, backend "
                f"{self.settings.backend}")

    def check_for(self, *, preset: str, image_size: int, backend: str | None = None,
                  num_classes: int | None = None, in_channels: int | None = None,
                  source: str = "latency table") -> None:
        """Refuse a table made for another space (preset), input size, backend or task."""
        wrong = []
        if self.preset != preset:
            wrong.append(f"space preset {self.preset}, not {preset}")
        if self.image_size != image_size:
            wrong.append(f"image size {self.image_size}, not {image_size}")
        if backend is not None and self.settings.backend != backend:
            wrong.append(f"backend {self.settings.backend}, not {backend}")
        for name, want in (("num_classes", num_classes), ("in_channels", in_channels)):
            if want is not None and getattr(self, name) != want:
                wrong.append(f"{name} {getattr(self, name)}, not {want}")
        if wrong:
            raise UserError(f"{source} is for {'; '.join(wrong)}: profile the search's space "
                            "at its image size with the wanted backend (python -m nas.latency "
                            "profile)")

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k not in self.parts]

    def to_json(self) -> str:
        data = asdict(self)
        data["settings"] = self.settings.to_dict()
        data["fit"] = list(self.fit)
        return json.dumps({"format": FORMAT, "version": VERSION,
                           "definition": self.settings.describe(), **data}, indent=1,
                          sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "latency table") -> LatencyTable:
        """The table in `text`; anything else is one UserError naming `source`."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UserError(f"{source} is not a latency table (not JSON: {err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{source} is not a latency table (no \"format\": \"{FORMAT}\"; "
                            "make one with python -m nas.latency profile)")
        if data.get("version") != VERSION:
            raise UserError(f"{source} is a latency table of version {data.get('version')!r}; "
                            f"this resnest-nas reads version {VERSION}")
        try:
            parts = {str(k): float(v) for k, v in data["parts"].items()}
            if not parts or not all(np.isfinite(list(parts.values()))):
                raise ValueError("parts must be finite numbers, at least one")
            return cls(
                space=str(data["space"]), preset=str(data["preset"]),
                image_size=int(data["image_size"]), num_classes=int(data["num_classes"]),
                in_channels=int(data["in_channels"]),
                settings=LatencySettings.from_dict(dict(data["settings"])), parts=parts,
                overhead_ms=float(data["overhead_ms"]), constant_ms=float(data["constant_ms"]),
                complete=bool(data["complete"]), machine=dict(data.get("machine", {})),
                fit=tuple(data.get("fit", ())), validation=dict(data.get("validation", {})),
            )
        except UserError as err:
            raise UserError(f"{source} is not a valid latency table: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise UserError(f"{source} is not a valid latency table: {what}") from None


def load_table(path: str | Path) -> LatencyTable:
    """The table stored at `path` (one UserError line when it is not one)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read latency table {path}: "
                        f"{getattr(err, 'strerror', None) or err}") from None
    return LatencyTable.from_json(text, source=f"latency table {path}")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a table file (recorded in experiment.json beside the table's path)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def spearman(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    return float(pd.Series(a, dtype=float).corr(pd.Series(b, dtype=float), method="spearman"))


def mape(measured: list[float] | np.ndarray, predicted: list[float] | np.ndarray) -> float:
    """Mean absolute percentage error of `predicted` against `measured`, in percent."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    return float(100 * np.mean(np.abs(p - m) / m))

"""One directory per experiment: its config, the Optuna study, trials.csv and per-trial files.

Layout of OUT/NAME/:
    experiment.json   the search's settings (what --resume reuses)
    study.db          the Optuna study (SQLite) unless --storage names another database
    trials.csv        one row per trial, rewritten atomically whenever a trial changes state
    trials/<id>/      each trial's spec.json, checkpoint.pt and metrics
    ray/              Ray Tune's experiment state
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from search_spaces.errors import UserError
from trials.record import CSV_COLUMNS, TrialRecord

CONFIG_FILE = "experiment.json"
TRIALS_FILE = "trials.csv"


@dataclass(frozen=True)
class ExperimentConfig:
    """Settings that define an experiment; stored so a resumed run searches the same problem."""

    name: str
    space: str
    preset: str
    data: str
    image_size: int
    objectives: tuple[str, ...]
    epochs: int
    trials: int
    time_budget_s: float
    sampler: str
    pruner: str
    seed: int
    storage: str
    constraints: dict[str, float] = field(default_factory=dict)
    seed_points: tuple[str, ...] = ()
    anchor: bool = True  # evaluate the space's cheapest corner first (searches with a cost)
    num_classes: int = 10
    in_channels: int = 1
    train: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data.setdefault("anchor", False)  # experiments from before the anchor resume without it
        for key in ("objectives", "seed_points"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_experiment(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def prepare_directory(out: Path, name: str, resume: bool) -> Path:
    """Check (before touching anything) that OUT/NAME can be created or resumed; return it."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name must be a plain directory name, got {name!r}")
    exp = out / name
    if resume:
        if not is_experiment(exp):
            raise UserError(
                f"cannot resume {exp}: it is not an experiment (no {CONFIG_FILE}); "
                "start a new one without --resume"
            )
        if not os.access(exp, os.W_OK):
            raise UserError(f"cannot resume {exp}: directory is not writable")
        return exp
    if exp.exists():
        raise UserError(
            f"experiment {exp} already exists; pass --resume to continue it or choose another --name"
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output directory {out} is not writable (checked {probe})")
    return exp


def load_config(exp: Path) -> ExperimentConfig:
    try:
        return ExperimentConfig.from_json((exp / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{exp / CONFIG_FILE} is unreadable or malformed: {err}") from None


def study_storage_url(exp: Path, storage: str) -> str:
    return storage or f"sqlite:///{(exp / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    """The Optuna storage behind `url`. SQLite files open in WAL mode with synchronous=NORMAL:
    the search commits ~30 times per trial and a default SQLite commit waits for an fsync
    (~15 ms on the benchmark machine, 0.1 ms in WAL; see docs/benchmarks.md). Committed trials
    still survive a crash of the driver; an OS crash may lose the last few. Other URLs are
    returned as they are (Optuna opens them)."""
    if not url.startswith("sqlite:///"):
        return url
    import sqlite3

    import optuna

    path = url[len("sqlite:///"):]

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return optuna.storages.RDBStorage(url, engine_kwargs={"creator": connect})


CsvCache = dict[str, tuple[TrialRecord, str]]


def _csv_line(record: TrialRecord) -> str:
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    csv.DictWriter(_Sink(), fieldnames=list(CSV_COLUMNS)).writerow(record.to_row())
    return "".join(lines)


def write_trials_csv(exp: Path, records: list[TrialRecord], cache: CsvCache | None = None) -> None:
    """Rewrite trials.csv atomically. With `cache` (trial id -> (record, its line)), only records
    that changed since the last call are formatted again: a search rewrites the file twice per
    trial, and re-serialising every spec and curve each time grows with the square of the trials."""
    cache = {} if cache is None else cache
    lines = []
    for r in sorted(records, key=lambda r: r.number):
        hit = cache.get(r.trial_id)
        if hit is None or hit[0] is not r:
            hit = cache[r.trial_id] = (r, _csv_line(r))
        lines.append(hit[1])
    header = ",".join(CSV_COLUMNS) + "\r\n"
    atomic_write_text(exp / TRIALS_FILE, header + "".join(lines))


def read_trials_csv(exp: Path) -> list[TrialRecord]:
    path = exp / TRIALS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [TrialRecord.from_row(row) for row in csv.DictReader(handle)]

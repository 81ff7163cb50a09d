"""One directory per experiment: its settings, the trial record, `trials.csv` and the study.

`ExperimentDir` is the one place that names the files of OUT/NAME/. A `TrialRecord` is the
contract between the search and everything after it: `analysis/` and `nas.export` read records
(through `trials.csv`) and the Optuna study, never Ray internals.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from search_spaces.spec import ArchSpec
from trials.run_dir import RunDir

if TYPE_CHECKING:  # Optuna is imported where a study is opened: trials.csv readers skip it
    from optuna.storages import BaseStorage

STATES = ("COMPLETE", "PRUNED", "FAIL", "INFEASIBLE", "RUNNING")
# Static costs a record may carry; all are "lower is better".
COST_KEYS = ("params", "macs", "latency_ms", "peak_memory_bytes")
ESTIMATORS = ("train", "supernet")  # how a trial's accuracy was obtained
CSV_COLUMNS = (
    "trial_id", "number", "state", "reason", "estimator", "tag", "spec_hash", "spec",
    *COST_KEYS, "accuracy", "best_accuracy", "epochs", "seconds", "checkpoint", "curve",
)


@dataclass(frozen=True)
class TrialRecord:
    """One architecture evaluated (or refused) by a search.

    `curve` holds one dict per finished epoch (`epoch`, `train_loss`, `val_top1`, ...); accuracy is
    the last epoch's validation top-1 in [0, 1]. `checkpoint` is the path of the final weights
    (a `checkpoint.pt` written by `trials.training`), when the trial trained. `estimator` says
    how the accuracy was obtained: `train` (the trial trained itself, per-candidate) or `supernet`
    (inherited weights of a supernet after BN recalibration: one curve entry at epoch 0; its
    checkpoint holds the inherited weights).
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
    estimator: str = "train"

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
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
            "estimator": self.estimator,
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
        estimator = row.get("estimator")  # trials.csv files from before the column: trained
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
            estimator=estimator if isinstance(estimator, str) and estimator else "train",
        )


@dataclass(frozen=True)
class ExperimentDir:
    """The files of an experiment directory OUT/NAME/ (nothing is created by naming them)."""

    path: Path

    @property
    def config(self) -> Path:
        """The search's settings, what `--resume` reuses."""
        return self.path / "experiment.json"

    @property
    def trials_csv(self) -> Path:
        """One row per trial, rewritten atomically whenever a trial changes state."""
        return self.path / "trials.csv"

    @property
    def study(self) -> Path:
        """The Optuna study (Optuna's journal file), unless `--storage` names a database."""
        return self.path / "study.journal"

    @property
    def legacy_study(self) -> Path:
        """The SQLite study of experiments made before the journal became the default."""
        return self.path / "study.db"

    @property
    def lock(self) -> Path:
        """Locked (`flock`) by the one search driver running on the experiment, which it names."""
        return self.path / "driver.lock"

    @property
    def ray(self) -> Path:
        """Ray Tune's own experiment folder."""
        return self.path / "ray"

    @property
    def supernet(self) -> Path:
        """The supernet a `--estimator supernet` search trains (`nas.supernet.trainer`'s
        checkpoint directory), unless `--supernet DIR` names one."""
        return self.path / "supernet"

    def trial(self, trial_id: str) -> RunDir:
        """A trial's run directory (spec, checkpoint, metrics)."""
        return RunDir(self.path / "trials" / trial_id)


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
    # Cheap corners evaluated first in searches with a cost: `families`, `cheapest` or `none`
    # (nas.search.anchor).
    anchor: str = "families"
    num_classes: int = 10
    in_channels: int = 1
    train: dict[str, Any] = field(default_factory=dict)
    train_fraction: float = 1.0  # share of the train split each trial trains on
    # How latency is taken when an objective or constraint needs it (empty otherwise): measured
    # on each trial's worker, or predicted from a latency table; the settings and definition.
    latency: dict[str, Any] = field(default_factory=dict)
    # How candidates are scored: `train` (each trains, per-candidate) or `supernet` (inherited
    # weights); `supernet` holds the supernet's directory (`dir`, None: the experiment's own) and
    # the training settings of one the search trains; `finetune` trials of the estimated front
    # are then trained per candidate, from the inherited weights or from scratch.
    estimator: str = "train"
    supernet: dict[str, Any] = field(default_factory=dict)
    finetune: int = 0
    finetune_from: str = "inherited"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        # Experiments from before the anchor resume without it; from before its families, with
        # the one cheapest corner they had (stored as true).
        anchor = data.get("anchor", False)
        data["anchor"] = {True: "cheapest", False: "none"}.get(anchor, anchor)
        for key in ("objectives", "seed_points"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def is_experiment(path: Path) -> bool:
    return ExperimentDir(path).config.is_file()


def prepare_directory(out: Path, name: str, resume: bool) -> Path:
    """Check (before touching anything) that OUT/NAME can be created or resumed; return it."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name must be a plain directory name, got {name!r}")
    exp = out / name
    if resume:
        if not is_experiment(exp):
            raise UserError(
                f"cannot resume {exp}: it is not an experiment (no experiment.json); "
                "start a new one without --resume"
            )
        if not os.access(exp, os.W_OK):
            raise UserError(f"cannot resume {exp}: directory is not writable")
        return exp
    if exp.exists():
        running = driver_of(exp)
        raise UserError(
            f"experiment {exp} already exists"
            + (f" and is being searched by another driver ({running})" if running else "")
            + "; pass --resume to continue it or choose another --name"
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output directory {out} is not writable (checked {probe})")
    return exp


def load_config(exp: Path) -> ExperimentConfig:
    try:
        return ExperimentConfig.from_json(ExperimentDir(exp).config.read_text())
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{ExperimentDir(exp).config} is unreadable or malformed: {err}") from None


@contextmanager
def driver_lock(exp: Path) -> Iterator[str]:
    """Hold the experiment's driver lock for the block; it yields a note naming the driver whose
    stale lock it took over ('' when there was none).

    A lock another live driver holds is refused with one line naming that driver's host and pid.
    The kernel releases an `flock` when its process ends, however it ends (kill -9 included), so
    a lock file whose lock can be taken belongs to a driver that is gone and is taken over. The
    file is never deleted: deleting a locked file lets two drivers lock two different files."""
    path = ExperimentDir(exp).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {path} ({err.strerror}): the experiment needs a "
                                "file system with working file locks") from None
            raise UserError(f"{exp} is being searched by another driver ({_holder(fd)}); let "
                            "it finish or stop it, then --resume") from None
        stale = _holder(fd) if os.fstat(fd).st_size else ""
        if stale and _release_journal_lock(ExperimentDir(exp).study):
            stale += "; released the study journal's lock it held"
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode(), 0)
        try:
            yield f"took over {path} from a driver that is gone ({stale})" if stale else ""
        finally:
            os.ftruncate(fd, 0)  # this driver ended: no holder to name
    finally:
        os.close(fd)


def _release_journal_lock(journal: Path) -> bool:
    """Remove the lock a driver killed mid-append left on Optuna's journal (True if there was
    one). Only under a taken-over driver lock: no other driver can be writing the journal."""
    from optuna.storages.journal import JournalFileSymlinkLock

    try:
        JournalFileSymlinkLock(str(journal.absolute())).release()
    except RuntimeError:  # no lock left behind
        return False
    return True


def driver_of(exp: Path) -> str:
    """The live driver holding the experiment's lock ('pid P on host H, ...'), or ''."""
    try:
        fd = os.open(ExperimentDir(exp).lock, os.O_RDONLY)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return ""
    except OSError:
        return _holder(fd)
    finally:
        os.close(fd)  # closing drops a lock taken here


def _holder(fd: int) -> str:
    """'pid P on host H, started T' from a lock file's JSON (what is known of it)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its host and pid are not recorded yet"


def study_location(exp: Path, storage: str) -> str:
    """Where the experiment's study lives, for messages: the `--storage` URL or the journal file."""
    return storage or str(ExperimentDir(exp).study)


def open_storage(exp: Path, storage: str = "", *, create: bool = False,
                 search: bool = False) -> BaseStorage:
    """The experiment's Optuna storage: Optuna's journal file `ExperimentDir(exp).study`, or the
    database at `storage` (sqlite:///PATH, postgresql://...) when `--storage` names one.

    `create` (a new search): a missing journal or database tables may be made. Otherwise the
    study must already be there. `search`: the search driver writes it (an SQLite file then runs
    in WAL mode until `close_storage`). A file that is damaged or not Optuna's raises one
    UserError line naming it, before anything writes to it."""
    if storage:
        return _open_database(storage, create, search)
    path, legacy = ExperimentDir(exp).study, ExperimentDir(exp).legacy_study
    if not path.is_file() and legacy.is_file():  # an experiment from before the journal default
        return _open_database(f"sqlite:///{legacy.resolve()}", False, search)
    if not path.is_file() and not create:
        raise UserError(f"{exp} has no {path.name} (the experiment's Optuna study); restore it "
                        "from a copy of the experiment")
    return _open_journal(path)


def close_storage(storage: BaseStorage) -> None:
    """End the search's use of its storage: an SQLite file's write-ahead log is folded back into
    the database file and WAL mode is left, so the study is complete in the one file a user
    copies or shares. A journal needs nothing (every change is already in its one file)."""
    import optuna

    if not isinstance(storage, optuna.storages.RDBStorage) or not storage.url.startswith(
            "sqlite:///"):
        return
    storage.engine.dispose()  # the pool's connections would keep the log open
    try:
        with closing(sqlite3.connect(storage.url[len("sqlite:///"):])) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error:
        pass  # still busy (another process reads it) or gone: it stays a valid WAL database


def _open_journal(path: Path) -> BaseStorage:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    data = path.read_bytes() if path.is_file() else b""
    # Optuna skips a last line it cannot parse and appends after it, which buries the damage
    # where every later read fails: the last record is checked here first.
    problem = "its last record is incomplete or not Optuna's"
    if not data or _ends_with_a_record(data):
        try:
            # An absolute path: Optuna's lock is a symlink to it, read back from elsewhere.
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path.absolute())))
            problem = "" if not data or optuna.get_all_study_names(storage) else "no study in it"
        except Exception as err:  # Optuna's replay raises several types for a foreign file
            problem = _gist(err)
    if problem:
        raise UserError(f"{path} is not a readable Optuna journal ({problem}); "
                        "it was left as it is")
    return storage


def _ends_with_a_record(data: bytes) -> bool:
    """The last line is a whole journal record: a JSON object with an op_code, and a newline."""
    try:
        record = json.loads(data.rsplit(b"\n", 2)[-2]) if data.endswith(b"\n") else None
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _open_database(url: str, create: bool, search: bool = False) -> BaseStorage:
    """An RDB storage. An existing SQLite file is read before anything writes to it, so a
    foreign one is refused unchanged. For the search, SQLite runs in WAL mode with
    synchronous=NORMAL so its many commits per trial do not each wait for an fsync; committed
    trials survive a driver crash, an OS crash may lose the last few. Readers leave the file's
    mode as it is."""
    import optuna

    if "://" not in url:
        raise UserError(f"--storage must be a database URL such as sqlite:///PATH or "
                        f"postgresql://USER@HOST/DB, got {url!r}")
    path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    if path is not None and not path.is_file() and not create:
        raise UserError(f"--storage {url}: there is no database file {path}")
    try:
        if path is None:
            storage = optuna.storages.RDBStorage(url, skip_table_creation=not create)
            if not create:
                optuna.get_all_study_names(storage)
            return storage
        if path.is_file() and path.stat().st_size:
            optuna.get_all_study_names(optuna.storages.RDBStorage(url, skip_table_creation=True))

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, check_same_thread=False)
            if search:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        return optuna.storages.RDBStorage(url, engine_kwargs={"creator": connect})
    except Exception as err:  # sqlalchemy and Optuna raise several types for unreadable storage
        raise UserError(f"--storage {url} is not a readable Optuna database ({_gist(err)}); "
                        "it was left as it is") from None


def _gist(err: BaseException) -> str:
    """The first line of a storage error's message; Optuna wraps the database's as the cause."""
    cause = err.__cause__ or err
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


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
    that changed since the last call are formatted again: the search rewrites the file on every
    state change and need not re-serialise every spec and curve each time."""
    cache = {} if cache is None else cache
    lines = []
    for r in sorted(records, key=lambda r: r.number):
        hit = cache.get(r.trial_id)
        if hit is None or hit[0] is not r:
            hit = cache[r.trial_id] = (r, _csv_line(r))
        lines.append(hit[1])
    header = ",".join(CSV_COLUMNS) + "\r\n"
    atomic_write_text(ExperimentDir(exp).trials_csv, header + "".join(lines))


def read_trials_csv(exp: Path) -> list[TrialRecord]:
    """The experiment's records ([] without a trials.csv). Bytes that are not UTF-8, a row that
    does not parse, an unknown state or a repeated trial id raise one UserError line naming the
    file and the line."""
    path = ExperimentDir(exp).trials_csv
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UserError(f"{path} is unreadable: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path} line {line}: bytes that are not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records: dict[str, TrialRecord] = {}
    try:
        for row in reader:
            record = TrialRecord.from_row(row)
            if record.trial_id in records:
                raise ValueError(f"trial {record.trial_id} appears twice")
            records[record.trial_id] = record
    except (ValueError, KeyError, TypeError, csv.Error) as err:
        what = f"missing column {err}" if isinstance(err, KeyError) else str(err)
        raise UserError(f"{path} line {reader.line_num} is not a trial record: {what}") from None
    return list(records.values())

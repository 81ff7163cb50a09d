"""The trial's latency, measured on its own worker before it trains.

A search whose objectives or constraints need latency (and has no latency table) hands every
trial its latency settings; the worker measures the trial's network with them on the resources
Ray gave it (its CPU threads, or its GPU), so a GPU search measures GPU latency and a cluster
measures on the nodes that run trials, never on the driver. The measurement is written to the
trial's run directory (`latency.json`: the figure, its settings and definition, the host and
process that took it) and reported to the driver before the first epoch.

Noise: concurrent trials on one machine would time each other's measurements, and training
beside a measurement inflates it (docs/benchmarks.md, "Latency (issue 22)", states by how much
here). So a measurement is a dedicated step on its node: two locks (`flock` on files in the
node's temporary directory, shared by every latency-measuring search on the node) make it wait
until no other measurement runs and every training step of such a search in flight has ended,
and no such step starts until it is done. The training steps hold the "work" lock shared and
pass the "gate" between steps (`TrainingGate`); a measurement closes the gate, then takes the
work lock exclusively (`measurement_lock`). Trials of searches that measure no latency, and other
programs, are not held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.models.latency import LatencyBackend, LatencySettings
from search_spaces.files import atomic_write_text
from trials.trial_config import TrialConfig

LOCK_NAME = "resnest-nas-latency.lock"


def lock_path(config: TrialConfig) -> str:
    """The node-wide lock file: the config's, else one in this node's temporary directory (never
    shared storage, so each node serialises its own measurements)."""
    return config.latency_lock or str(Path(tempfile.gettempdir()) / LOCK_NAME)


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextmanager
def measurement_lock(path: str) -> Iterator[float]:
    """The node to this measurement alone (see the module docstring): the gate closed, then the
    work lock exclusively; yields the seconds waited for both."""
    started = time.monotonic()
    gate, work = _open(path + ".gate"), _open(path)
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(work, fcntl.LOCK_EX)
        yield time.monotonic() - started
    finally:
        os.close(work)  # closing releases a lock
        os.close(gate)


class TrainingGate:
    """A training trial's side of `measurement_lock`: hold the work lock shared while training,
    and between steps let a waiting measurement run first (`between_steps`, the trainer's
    per-step hook). `close()` releases everything (the trial's end)."""

    def __init__(self, path: str) -> None:
        self.gate, self.work = _open(path + ".gate"), _open(path)
        self._pass_gate()
        fcntl.flock(self.work, fcntl.LOCK_SH)

    def _pass_gate(self) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_SH)  # waits while a measurement holds the gate
        fcntl.flock(self.gate, fcntl.LOCK_UN)

    def between_steps(self) -> None:
        fcntl.flock(self.work, fcntl.LOCK_UN)
        self._pass_gate()
        fcntl.flock(self.work, fcntl.LOCK_SH)

    def close(self) -> None:
        for fd in (self.work, self.gate):
            with contextlib.suppress(OSError):
                os.close(fd)


def trial_latency(config: TrialConfig, device: str, threads: int) -> dict[str, Any] | None:
    """Measure (or, on a retry, re-read) the trial's latency; None when the search needs none.
    The record: `latency_ms`, `settings`, `definition`, `host`, `pid`, `waited_s`."""
    if not config.latency:
        return None
    run = config.run_dir
    if run is not None and run.latency.is_file():  # a retry of this trial: measured already
        return json.loads(run.latency.read_text())
    values = dict(config.latency)
    if values.get("threads") is None:
        values["threads"] = threads
    settings = LatencySettings(**{**values, "device": device})
    backend = LatencyBackend(settings)
    with measurement_lock(lock_path(config)) as waited:
        latency_ms = backend.measure_spec(config.spec, config.image_size)
    record = {"latency_ms": latency_ms, "settings": settings.to_dict(),
              "definition": settings.describe(), "host": socket.gethostname(),
              "pid": os.getpid(), "waited_s": round(waited, 3)}
    if run is not None:
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.latency, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def latency_report(config: TrialConfig, record: dict[str, Any]) -> dict[str, Any]:
    """What the worker reports before training: the latency, and `infeasible` (why) when it
    breaks the search's --max-latency-ms (the worker then stops without training)."""
    out: dict[str, Any] = {"latency_ms": float(record["latency_ms"])}
    limit = config.max_latency_ms
    if limit is not None and out["latency_ms"] > limit:
        out["infeasible"] = f"latency_ms {out['latency_ms']:.4g} > max_latency_ms {limit:.4g}"
    return out

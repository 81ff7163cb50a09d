"""The trial's latency, measured on its own worker before it trains.

A search whose objectives or constraints need latency (and has no latency table) hands every
trial its latency settings; the worker measures the trial's network with them on the resources
Ray gave it (its CPU threads, or its GPU), so a GPU search measures GPU latency and a cluster
measures on the nodes that run trials, never on the driver. The measurement is written to the
trial's run directory (`latency.json`: the figure, its settings and definition, the host and
process that took it) and reported to the driver before the first epoch.

Noise: concurrent trials on one machine would time each other's measurements. A node-wide lock
(`flock` on a file in the node's temporary directory, shared by every search on the node) lets
one measurement run at a time per machine; trials that are training meanwhile keep running, and
docs/benchmarks.md ("Latency (issue 22)") states how much that inflates the figure here.
"""

from __future__ import annotations

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


def default_lock_path() -> str:
    """The node-wide lock file (node-local: the temporary directory, not shared storage)."""
    return str(Path(tempfile.gettempdir()) / LOCK_NAME)


@contextmanager
def node_lock(path: str) -> Iterator[float]:
    """Hold the exclusive lock at `path` for the block; yields the seconds waited for it."""
    started = time.monotonic()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # closing releases the lock


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
    with node_lock(config.latency_lock or default_lock_path()) as waited:
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

"""Writing one search trial to SQLite: Optuna's API against `nas.search.rdb_trial_writer`, interleaved.

Each round writes the same trial (24 resnest parameters, the attributes the search sets) once
through each writer into its own study, alternating which goes first: the start (create with
every parameter and attribute) and the end (the changed curve attribute, state and values), as
`nas.search.study_mirror.StudyMirror` does. Prints the median milliseconds of each and the ratios.

    python bench/study_writes.py --trials 100
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _trials(n: int, seed: int) -> list[tuple[Any, Any]]:
    """(start, end) FrozenTrial pairs shaped like the search's."""
    import numpy as np
    import optuna

    from search_spaces import get_space

    space, rng = get_space("resnest"), np.random.default_rng(seed)
    memory = optuna.create_study(directions=["maximize", "minimize"],
                                 sampler=optuna.samplers.RandomSampler(seed=seed))
    pairs = []
    for _ in range(n):
        trial = memory.ask()
        spec = space.suggest(trial)
        trial.set_user_attr("spec", spec.to_json())
        trial.set_user_attr("tag", spec.tag)
        for key in ("params", "macs", "peak_memory_bytes"):
            trial.set_user_attr(key, float(rng.uniform(1e4, 1e7)))
        trial.set_user_attr("curve", [])
        start = copy.deepcopy(memory._storage.get_trial(trial._trial_id))
        trial.set_user_attr("curve", [float(rng.uniform(0, 1))])
        memory.tell(trial, [float(rng.uniform(0, 1)), float(rng.uniform(1e5, 1e7))])
        pairs.append((start, copy.deepcopy(memory._storage.get_trial(trial._trial_id))))
    return pairs


def _optuna_write(study: Any, start: Any, end: Any) -> tuple[float, float]:
    from nas.search.rdb_trial_writer import changes

    storage = study._storage
    t0 = time.perf_counter()
    trial_id = storage.create_new_trial(study._study_id, template_trial=start)
    t1 = time.perf_counter()
    for key, value in changes(start.user_attrs, end.user_attrs):
        storage.set_trial_user_attr(trial_id, key, value)
    storage.set_trial_state_values(trial_id, end.state, end.values)
    return t1 - t0, time.perf_counter() - t1


def _direct_write(study: Any, start: Any, end: Any) -> tuple[float, float]:
    from nas.search import rdb_trial_writer

    rdb = rdb_trial_writer.rdb_backend(study._storage)
    t0 = time.perf_counter()
    trial_id = rdb_trial_writer.create_trial(rdb, study._study_id, start)
    t1 = time.perf_counter()
    rdb_trial_writer.update_trial(rdb, trial_id, start, end)
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=100, help="rounds (one trial per writer each)")
    p.add_argument("--warmup", type=int, default=10, help="rounds left out of the medians")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import optuna

    from nas.experiment import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pairs = _trials(args.trials + args.warmup, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="study-writes-"))
    writers = {"optuna": _optuna_write, "direct": _direct_write}
    studies = {name: optuna.create_study(
        storage=open_storage(f"sqlite:///{folder / name}.db"), study_name=name,
        directions=["maximize", "minimize"]) for name in writers}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in writers}
    for i, (start, end) in enumerate(pairs):
        order = list(writers) if i % 2 == 0 else list(reversed(writers))
        for name in order:
            took = writers[name](studies[name], start, end)
            if i >= args.warmup:
                times[name].append(took)
    row: dict[str, Any] = {"trials": args.trials, "params": len(pairs[0][0].params)}
    for name, pairs_ms in times.items():
        row[f"{name}_start_ms"] = 1e3 * statistics.median(t[0] for t in pairs_ms)
        row[f"{name}_end_ms"] = 1e3 * statistics.median(t[1] for t in pairs_ms)
    row["start_ratio"] = row["direct_start_ms"] / row["optuna_start_ms"]
    row["end_ratio"] = row["direct_end_ms"] / row["optuna_end_ms"]
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ray Tune's own per-trial time under our driver: the floor no change to our code can go below.

`trials.ray_runner.run_search` (the search's Tuner, Searcher and Scheduler, with the same options)
runs a controller that decides nothing: every proposal is the same ready-made config, no result
is pruned, nothing is written. The trainable is `bench/overhead.py`'s tiny one (one SGD step and
a checkpoint per epoch, 2 epochs). Seconds per trial = (wall - the trainable's own compute) /
trials, over the trials after the first 10 (Ray's start-up and first actor are excluded).

    python bench/ray_floor.py --trials 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class NullController:
    """The controller interface `run_search` drives, with no decisions behind it."""

    def __init__(self, trials: int, out: Path, compute_log: Path) -> None:
        self.trials, self.out, self.compute_log = trials, out, compute_log
        self.launched = 0
        self.finished: list[float] = []

    def next_trial(self) -> tuple[str, dict[str, Any]] | None:
        if self.launched >= self.trials:
            return None
        trial_id = f"t{self.launched:04d}"
        self.launched += 1
        return trial_id, {"trial_dir": str(self.out / "trials" / trial_id), "epochs": 2,
                          "_compute_log": str(self.compute_log)}

    def on_result(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def on_complete(self, trial_id: str, result: dict[str, Any] | None,
                    reason: str | None = None) -> None:
        self.finished.append(time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("runs/bench-ray-floor"))
    args = p.parse_args(argv)
    from overhead import tiny_trainable

    from trials import ray_runner

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    compute_log = (args.out / "compute.jsonl").resolve()
    ray_runner.connect(None)
    controller = NullController(args.trials, args.out.resolve(), compute_log)
    start = time.perf_counter()
    ray_runner.run_search(controller, storage_path=args.out, cpus_per_trial=1, gpus_per_trial=0,
                          concurrency=1, max_failures=0, time_budget_s=36000,
                          trainable=tiny_trainable)
    wall = time.perf_counter() - start
    compute: dict[str, float] = {}
    for line in compute_log.read_text().splitlines():
        row = json.loads(line)
        compute[row["trial"]] = row["compute_s"]  # cumulative per trial: the last one counts
    done = controller.finished
    steady = [compute[str(args.out.resolve() / "trials" / f"t{i:04d}")]
              for i in range(10, len(done))]
    per_trial = (done[-1] - done[9] - sum(steady)) / (len(done) - 10)
    result = {"trials": len(done), "wall_s": wall, "first_10_s": done[9] - start,
              "ray_s_per_trial_after_10": per_trial,
              "compute_s_per_trial": sum(compute.values()) / max(len(compute), 1)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

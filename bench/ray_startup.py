"""Seconds to start local Ray the way `nas.search` does, each run in a fresh interpreter.

One run: `import ray`, `trials.ray_runner.connect(None)` (what the search calls), then one
`ray.get` of a trivial remote task, then shutdown. This is a fixed cost of every local search,
spread over its trials (docs/benchmarks.md, "Framework overhead at scale").

    python bench/ray_startup.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
from trials import ray_runner
ray_runner.connect(None)
t2 = time.perf_counter()
ray.get(ray.remote(lambda: 1).remote())
t3 = time.perf_counter()
ray.shutdown()
print(json.dumps({"import": t1 - t0, "init": t2 - t1, "first_task": t3 - t2}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    print("| run | import ray | ray.init (local) | first task | total |\n|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        done = subprocess.run([sys.executable, "-c", ONE_RUN, str(ROOT)], capture_output=True,
                              text=True, check=True)
        t = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {run} | {t['import']:.2f} s | {t['init']:.2f} s | {t['first_task']:.2f} s | "
              f"{sum(t.values()):.1f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

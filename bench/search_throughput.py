"""Training images/s inside a real search vs the same spec trained standalone.

Does a trial train as fast inside a search as the same network trained on its own (the target
is >= 90%)? A real `python -m nas.search` run (Ray Tune, one trial at a time,
`--cpus-per-trial 1` so each trial gets one torch thread, no pruning) reports `images_per_s` per
epoch (training loop only, `trials.training`); each trial's spec is then trained with
`python -m trials.train` at the same image size, batch size, epochs, seed and `--threads 1`.
Rounds alternate search and standalone (ABAB; every search replays the same seeded proposals)
so drifting machine load hits both sides. Ray starts its workers at nice 15; `nas.search`
starts them at nice 0 (the standalone run's priority) unless RAY_worker_niceness is set, which
`--worker-niceness` does here. Per trial: median images/s over epochs >= 2 and rounds, search /
standalone (the first epoch of a new network includes one-off kernel set-up); overall: the
geometric mean over trials.

    python -m bench.search_throughput --trials 4 --epochs 3 --rounds 2
    python -m bench.search_throughput --trials 2 --epochs 8 --rounds 2   # steadiness over epochs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from search_spaces import ArchSpec
from trials.run_dir import RunDir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="the first epoch is not compared")
    p.add_argument("--rounds", type=int, default=2, help="search + standalone repetitions")
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker-niceness", type=int, default=None,
                   help="RAY_worker_niceness for the search (default: what nas.search uses, 0)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-throughput"))
    return p.parse_args(argv)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("$ " + " ".join([f"{k}={v}" for k, v in (env or {}).items()] + cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def search(args: argparse.Namespace, name: str) -> dict[str, dict[str, Any]]:
    """One real search; trial id -> spec path and images/s per epoch."""
    _run([sys.executable, "-m", "nas.search", "--out", str(args.out), "--name", name,
          "--trials", str(args.trials), "--epochs", str(args.epochs),
          "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
          "--seed", str(args.seed), "--pruner", "none", "--concurrency", "1",
          "--cpus-per-trial", "1", "--time-budget", "60m"],
         env=None if args.worker_niceness is None
         else {"RAY_worker_niceness": str(args.worker_niceness)})
    return read_trials(args.out / name)


def read_trials(experiment: Path) -> dict[str, dict[str, Any]]:
    """Trial id -> its spec file, the spec as sorted JSON (equal specs, equal text: the same
    seeded proposal in another search) and images/s per epoch, from the trial directories."""
    out = {}
    for trial in sorted((experiment / "trials").iterdir()):
        run = RunDir(trial)
        curve = [json.loads(x) for x in run.metrics.read_text().splitlines()]
        spec = json.loads(run.spec.read_text())
        out[trial.name] = {"spec": run.spec, "hash": json.dumps(spec, sort_keys=True),
                           "images_per_s": [e["images_per_s"] for e in curve]}
    return out


def standalone(args: argparse.Namespace, trial_id: str, spec: Path) -> list[float]:
    out = args.out / f"standalone-{trial_id}"
    shutil.rmtree(out, ignore_errors=True)
    _run([sys.executable, "-m", "trials.train", "--arch", str(spec), "--data", "digits",
          "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
          "--epochs", str(args.epochs), "--seed", str(args.seed), "--threads", "1",
          "--quiet", "--out", str(out)])
    lines = RunDir(out).metrics.read_text().splitlines()
    return [json.loads(x)["images_per_s"] for x in lines]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    searched: list[dict[str, dict[str, Any]]] = []
    alone: dict[str, list[list[float]]] = {}
    for r in range(args.rounds):  # search, standalone, search, standalone, ...
        searched.append(search(args, f"search-{r}"))
        for t, trial in searched[0].items():
            alone.setdefault(t, []).append(standalone(args, f"{t}-{r}", trial["spec"]))
    rows = []
    print("| trial | tag | search images/s, epochs >= 2, per round | standalone, per round "
          "| ratio of medians |\n|---|---|---|---|---|")
    for t, first in searched[0].items():
        runs = [s[t]["images_per_s"] for s in searched
                if t in s and s[t]["hash"] == first["hash"]]  # same seeded proposal
        ours = [v for r in runs for v in r[1:]]
        theirs = [v for r in alone[t] for v in r[1:]]
        ratio = statistics.median(ours) / statistics.median(theirs)
        rows.append({"trial": t, "search": runs, "standalone": alone[t], "ratio": ratio})
        tag = ArchSpec.from_json(first["spec"].read_text()).tag
        print(f"| {t} | {tag} | {_fmt(runs)} | {_fmt(alone[t])} | {ratio:.1%} |")
    mean = statistics.geometric_mean(r["ratio"] for r in rows)
    print(f"\ngeometric mean ratio search/standalone: {mean:.1%}; per trial "
          f"{min(r['ratio'] for r in rows):.1%}-{max(r['ratio'] for r in rows):.1%}; "
          f"target >= 90%: {'met' if mean >= 0.9 else 'MISSED'}")
    (args.out / "throughput.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _fmt(runs: list[list[float]]) -> str:
    return "; ".join(", ".join(f"{v:.0f}" for v in r[1:]) for r in runs)


if __name__ == "__main__":
    sys.exit(main())

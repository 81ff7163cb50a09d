"""Training images/s inside a real search vs the same spec trained standalone.

A real `python -m nas.search` run (Ray Tune, one trial at a time, `--cpus-per-trial 1` so each
trial gets one torch thread, no pruning) reports `images_per_s` per epoch (training loop only,
`trials.training`); each trial's spec is then trained with `python -m trials.train` at the same
image size, batch size, epochs, seed and `--threads 1`. Order search, standalone, search (ABA,
the second search replays the same seeded proposals) so drifting machine load hits both sides.
The ratio per trial is search / standalone images/s, per epoch and for the last epoch (the first
epoch of a new network includes one-off kernel set-up).

    python bench/search_throughput.py
    python bench/search_throughput.py --trials 4 --epochs 2 --image-size 8 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_spaces import ArchSpec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-throughput"))
    return p.parse_args(argv)


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def search(args: argparse.Namespace, name: str) -> dict[str, dict[str, Any]]:
    """One real search; trial id -> spec path and images/s per epoch."""
    _run([sys.executable, "-m", "nas.search", "--out", str(args.out), "--name", name,
          "--trials", str(args.trials), "--epochs", str(args.epochs),
          "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
          "--seed", str(args.seed), "--pruner", "none", "--concurrency", "1",
          "--cpus-per-trial", "1", "--time-budget", "60m"])
    out = {}
    for trial in sorted((args.out / name / "trials").iterdir()):
        curve = [json.loads(x) for x in (trial / "metrics.jsonl").read_text().splitlines()]
        spec = json.loads((trial / "spec.json").read_text())
        out[trial.name] = {"spec": trial / "spec.json", "hash": json.dumps(spec, sort_keys=True),
                           "images_per_s": [e["images_per_s"] for e in curve]}
    return out


def standalone(args: argparse.Namespace, trial_id: str, spec: Path) -> list[float]:
    out = args.out / f"standalone-{trial_id}"
    shutil.rmtree(out, ignore_errors=True)
    _run([sys.executable, "-m", "trials.train", "--arch", str(spec), "--data", "digits",
          "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
          "--epochs", str(args.epochs), "--seed", str(args.seed), "--threads", "1",
          "--quiet", "--out", str(out)])
    return [json.loads(x)["images_per_s"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    first = search(args, "search-a")
    alone = {t: standalone(args, t, r["spec"]) for t, r in first.items()}
    second = search(args, "search-b")
    rows = []
    print("| trial | tag | search images/s per epoch (runs A, B) | standalone | ratio all epochs "
          "| ratio last epoch |\n|---|---|---|---|---|---|")
    for t, a in first.items():
        b = second.get(t)
        same = b is not None and b["hash"] == a["hash"]
        runs = [a["images_per_s"]] + ([b["images_per_s"]] if same else [])
        mean_all = statistics.fmean(statistics.fmean(r) for r in runs)
        mean_last = statistics.fmean(r[-1] for r in runs)
        ratio_all = mean_all / statistics.fmean(alone[t])
        ratio_last = mean_last / alone[t][-1]
        rows.append({"trial": t, "search": runs, "standalone": alone[t],
                     "ratio_all": ratio_all, "ratio_last": ratio_last})
        tag = ArchSpec.from_json(a["spec"].read_text()).tag
        print(f"| {t} | {tag} | {'; '.join(', '.join(f'{v:.0f}' for v in r) for r in runs)} "
              f"| {', '.join(f'{v:.0f}' for v in alone[t])} | {ratio_all:.1%} | {ratio_last:.1%} |")
    total = statistics.fmean(r["ratio_all"] for r in rows)
    last = statistics.fmean(r["ratio_last"] for r in rows)
    print(f"\nmean ratio search/standalone: {total:.1%} (all epochs), {last:.1%} (last epoch); "
          f"target >= 90%: {'met' if min(total, last) >= 0.9 else 'MISSED'}")
    (args.out / "throughput.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optuna's TPESampler against our CachingTPESampler: ask time against study size, interleaved.

Two studies grow side by side to --trials, one trial at a time, with the search's TPE arguments
(`multivariate=True, group=True`, n_startup_trials 10, two objectives): A uses
`optuna.samplers.TPESampler`, B `nas.search.tpe_sampler.CachingTPESampler`. For every trial both ask
(+ our space's `suggest`) and tell, alternating which goes first. Values come from a seeded hash
of the parameters, every 4th trial is pruned, so the two studies stay identical exactly when the
proposals are (checked at every trial). Printed: median ms per ask and tell in windows of trials,
and B / A.

    python bench/tpe_cache.py --trials 1000
    python bench/tpe_cache.py --trials 60 --windows 10 60      # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--windows", nargs="+", type=int, default=[100, 300, 600, 1000],
                   help="window upper bounds (trial numbers)")
    p.add_argument("--space", default="resnest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write per-trial timings as JSON here")
    args = p.parse_args(argv)
    import optuna
    from optuna.trial import TrialState

    from nas.search.tpe_sampler import CachingTPESampler
    from search_spaces import get_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = get_space(args.space)
    kwargs = dict(seed=args.seed, n_startup_trials=10, multivariate=True, group=True)
    studies = {
        "stock": optuna.create_study(directions=["maximize", "minimize"],
                                     sampler=optuna.samplers.TPESampler(**kwargs)),
        "caching": optuna.create_study(directions=["maximize", "minimize"],
                                       sampler=CachingTPESampler(**kwargs)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in studies}

    def step(name: str, i: int) -> dict:
        study = studies[name]
        start = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        asked = time.perf_counter()
        digest = zlib.crc32(repr(sorted(trial.params.items())).encode())
        if i % 4 == 3:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [digest % 1000 / 1000, float(digest % 7919) * 1e3])
        times[name].append((asked - start, time.perf_counter() - asked))
        return trial.params

    for i in range(args.trials):
        order = ("stock", "caching") if i % 2 == 0 else ("caching", "stock")
        proposals = {name: step(name, i) for name in order}
        if proposals["stock"] != proposals["caching"]:
            print(f"proposals differ at trial {i}: the samplers are not equivalent", file=sys.stderr)
            return 1

    print(f"{args.trials} trials, identical proposals in both studies")
    print("| trials | stock ask ms | caching ask ms | caching / stock | stock tell ms | caching tell ms |")
    print("|---|---|---|---|---|---|")
    low = 0
    for high in [w for w in args.windows if w <= args.trials]:
        med = {name: [statistics.median(t[k] for t in times[name][low:high]) * 1e3 for k in (0, 1)]
               for name in studies}
        print(f"| {low + 1}-{high} | {med['stock'][0]:.1f} | {med['caching'][0]:.1f} | "
              f"{med['caching'][0] / med['stock'][0]:.2f} | {med['stock'][1]:.2f} | "
              f"{med['caching'][1]:.2f} |", flush=True)
        low = high
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

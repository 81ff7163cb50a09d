"""TPE ask + suggest + tell time against study size, with and without `group=True`.

Our `make_sampler("tpe")` uses multivariate TPE with `group=True`: the space's conditional
parameters split into groups, and TPE splits the trials and fits its estimators once per group.
This measures how much of the per-ask cost that is, and that the growth with study size remains
without it (in-memory study, two objectives with seeded random values, our space's `suggest`).

    python bench/tpe_groups.py
    python bench/tpe_groups.py --sizes 50 100 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timings(group: bool, sizes: list[int], repeats: int, space_name: str) -> list[float]:
    """ms per ask + suggest + tell, averaged over `repeats` trials after each size is reached."""
    import optuna

    from search_spaces import get_space

    space = get_space(space_name)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=10, multivariate=True, group=group)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = np.random.default_rng(0)

    def run(n: int) -> None:
        for _ in range(n):
            trial = study.ask()
            space.suggest(trial)
            study.tell(trial, [float(rng.random()), float(rng.random() * 1e7)])

    out = []
    for size in sizes:
        run(max(0, size - len(study.trials)))
        start = time.perf_counter()
        run(repeats)
        out.append((time.perf_counter() - start) / repeats * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 300, 600])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--space", default="resnest")
    args = p.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    print("| group | " + " | ".join(f"ms @ {n}" for n in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for group in (True, False):
        ms = timings(group, args.sizes, args.repeats, args.space)
        print(f"| {group} | " + " | ".join(f"{v:.0f}" for v in ms) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

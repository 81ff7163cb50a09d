"""Does a local Ray, merely running, slow a trial trained outside it?

On an H100, `bench/gpu_search.py` read search trials at about 0.85 of the same specs trained
standalone, in both orders, while `bench/trial_hosts.py` (Ray up for every host) found Tune's
trial host within the noise of a plain process. The standalone runs of `gpu_search.py` happen
with Ray shut down. This script separates the two: the same specs, each trained in one
persistent trial process outside Ray (`bench/gpu_trials.py`'s), in alternating rounds without
Ray and with a local Ray started the way `nas.search` starts it (`trials.ray_runner.connect`)
and left idle. Small networks on a GPU are bound by the host's kernel launches, so anything that
takes the host's CPUs or clocks shows here.

    python bench/ray_presence.py --rounds 2                   # on a CUDA machine with Ray
    python bench/ray_presence.py --device cpu --specs resnest:5 --epochs 2 --rounds 2   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_trials import Pool, Utilisation, steady, trial_config, write_raw  # noqa: E402

MODES = ("no Ray", "Ray idle")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--specs", nargs="+", default=["resnest:5", "resnest:4"])
    p.add_argument("--epochs", type=int, default=6, help="epoch 1 is not counted")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the trial process")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", type=Path, help="write the raw results here as JSON")
    args = p.parse_args(argv)
    if args.epochs < 2 or min(args.rounds, args.threads) < 1:
        print("error: --epochs must be >= 2, --rounds and --threads >= 1", file=sys.stderr)
        return 2
    import ray
    import torch

    from trials import ray_runner

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    rates: dict[str, dict[str, list[float]]] = {s: {m: [] for m in MODES} for s in args.specs}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            if mode == "Ray idle":
                ray_runner.connect(None)
            pool = Pool(1, args.threads)
            try:
                for spec in args.specs:
                    config = trial_config(args, spec, 0, args.device == "cuda")
                    results, _ = pool.run([config], Utilisation())
                    curve = results[0]["images_per_s"]
                    rates[spec][mode].append(steady(curve))
                    print(f"round {r + 1} {mode} {spec}: {[round(x) for x in curve]}", flush=True)
            finally:
                pool.close()
                if mode == "Ray idle":
                    ray.shutdown()
    print(f"\n{args.device}, batch {args.batch_size}, {args.image_size} px, {args.threads} threads, "
          f"{args.epochs} epochs; images/s, median over {args.rounds} rounds of epochs >= 2")
    print("| spec | " + " | ".join(MODES) + " | Ray idle / no Ray |\n|---|---|---|---|")
    for spec, by_mode in rates.items():
        none, idle = (statistics.median(by_mode[m]) for m in MODES)
        print(f"| {spec} | {none:,.0f} | {idle:,.0f} | {idle / none:.2f} |")
    if args.output:
        write_raw(args.output, args, rates=rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

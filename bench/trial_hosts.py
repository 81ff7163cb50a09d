"""The same trial in different hosts: where does a search trial lose training speed?

`bench/gpu_search.py` found search trials on a GPU training more slowly than the same spec trained
standalone. A search trial differs from a standalone one in where it runs, so this script trains
the same trial config (same spec, seed, batch, image size, threads, device) in each host and
compares the trainer's own images/s (training loop only, median over epochs >= 2):

- `process`: the main thread of this process (a standalone run);
- `thread`: a plain Python thread of this process;
- `actor`: the main thread of a Ray actor with the trial's CPUs and GPU;
- `actor-thread`: a thread inside that actor (Tune runs function trainables in one);
- `tune`: the search's own trainable (`trials.ray_runner.ray_trainable`, with a trial directory)
  through `run_tuner`: the search's trial path without the driver's controller.

Rounds interleave the hosts, reversing the order each round. Ray starts as the search starts it
(`trials.ray_runner.connect`).

    python bench/trial_hosts.py --device cuda
    python bench/trial_hosts.py --device cpu --batch-size 8 --image-size 8 --threads 1 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_trials import write_raw  # noqa: E402

HOSTS = ("process", "thread", "actor", "actor-thread", "tune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--specs", nargs="+", default=["resnest:5", "resnest:4"])
    p.add_argument("--hosts", nargs="+", default=list(HOSTS), choices=HOSTS)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4, help="epoch 1 is not counted")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="CPUs per trial (torch threads)")
    p.add_argument("--output", type=Path, help="write the raw results here as JSON")
    return p.parse_args(argv)


def train(config: dict[str, Any], threads: int) -> list[float]:
    """Train one trial here, in the calling thread; images/s per epoch."""
    import torch

    from trials.trial import Trial

    torch.set_num_threads(threads)
    return [record["images_per_s"] for record in Trial(config, threads=threads).run()]


def in_thread(config: dict[str, Any], threads: int) -> list[float]:
    out: list[list[float]] = []
    worker = threading.Thread(target=lambda: out.append(train(config, threads)))
    worker.start()
    worker.join()
    return out[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    from trials import ray_runner

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    gpus = 1 if args.device == "cuda" else 0
    ray_runner.connect(None)

    # Half a GPU each for the actor and Tune's trial, so that the idle actor never keeps Tune's
    # trial waiting for the GPU (Ray only sets CUDA_VISIBLE_DEVICES; the fraction costs nothing).
    @ray.remote(num_cpus=args.threads, num_gpus=gpus / 2)
    class Host:
        def train(self, config: dict[str, Any], threads: int, threaded: bool) -> list[float]:
            return in_thread(config, threads) if threaded else train(config, threads)

    if ray_runner.available_cpus() < 2 * args.threads:
        print(f"error: the actor and Tune's trial need {2 * args.threads} CPUs together; lower "
              "--threads", file=sys.stderr)
        return 2
    actor = Host.remote()
    scratch = Path(tempfile.mkdtemp(prefix="trial-hosts-"))

    def tune_host(config: dict[str, Any]) -> list[float]:
        trial_dir = Path(tempfile.mkdtemp(dir=scratch))
        ray_runner.run_tuner({**config, "trial_dir": str(trial_dir)}, storage_path=scratch / "ray",
                             cpus_per_trial=args.threads, gpus_per_trial=gpus / 2)
        lines = (trial_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["images_per_s"] for line in lines]

    run = {"process": lambda c: train(c, args.threads), "thread": lambda c: in_thread(c, args.threads),
           "actor": lambda c: ray.get(actor.train.remote(c, args.threads, False)),
           "actor-thread": lambda c: ray.get(actor.train.remote(c, args.threads, True)),
           "tune": tune_host}
    rates: dict[str, dict[str, list[float]]] = {s: {h: [] for h in args.hosts} for s in args.specs}
    for r in range(args.rounds):
        for spec in args.specs:
            config = {"spec": spec, "device": args.device, "epochs": args.epochs, "seed": 0,
                      "batch_size": args.batch_size, "image_size": args.image_size}
            for host in args.hosts if r % 2 == 0 else reversed(args.hosts):
                curve = run[host](config)
                rates[spec][host].append(statistics.median(curve[1:]))
                print(f"round {r + 1} {spec} {host}: {[round(x) for x in curve]}", flush=True)
    print(f"\n{args.device}, batch {args.batch_size}, {args.image_size} px, {args.threads} threads, "
          f"{args.epochs} epochs; images/s per trial (median over rounds) and vs process")
    print("| spec | " + " | ".join(args.hosts) + " |\n|---|" + "---|" * len(args.hosts))
    for spec, by_host in rates.items():
        base = statistics.median(by_host[args.hosts[0]])
        print(f"| {spec} | " + " | ".join(
            f"{statistics.median(v):,.0f} ({statistics.median(v) / base:.2f})" for v in by_host.values())
            + " |")
    if args.output:
        write_raw(args.output, args, rates=rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

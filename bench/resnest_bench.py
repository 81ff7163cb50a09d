"""ResNeSt-Bench: a ground-truth table of the small preset on Fashion-MNIST.

Every row is one (architecture, seed) trained from scratch with one protocol, the quick start's
full fidelity (`nas.search` defaults: the shipped Fashion-MNIST subset at its default size and
train share, `DEFAULTS['epochs']` epochs, the search's batch size and learning rate). The
architectures: `resnest:I` for I in 0..samples-1 (uniform samples of the small preset, the same
ones `trials.train --arch resnest:I` trains) and the hand-designed family
(`search_spaces.hand_designed`). The first `--seeded` samples and every hand-designed point are
also trained with the other `--seeds`.

The slice (`slice:I` for I in 0..slice-1, kind `slice`, first seed only): uniform samples of the
small preset with the global axes a supernet fixes set to the default `SupernetConfig`'s, so that
one default supernet covers every one of them (issue 20, item 4 ranks them with it; the uniform
samples vary every global axis and almost none share one supernet). Sample I is drawn from its
own numpy Generator seeded with (`SLICE_SEED`, I): a tag always names the same spec, whatever
`--slice` is.

The corners (`corner:<stem>-<shortcut>`, kind `corner`, every seed): the four anchors the search
trains first (`nas.search.anchor.family_corners`, the cheapest network of each stem and avg_down
family), so that the report can say what the anchors alone are worth.

The CSV is appended one row at a time (flushed and synced); a rerun skips the (tag, seed) pairs
it holds and drops a torn last line, so the table grows over several sessions. Runs go to a
process pool with one torch thread per worker (`--device cuda` trains on a GPU instead).

    python -m bench.resnest_bench --workers 2                       # the table, resumable
    python -m bench.resnest_bench --samples 2 --seeded 1 --slice 1 --no-hand --out /tmp/b.csv \
        --epochs 1
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.models.costs import measure_costs
from nas.search.anchor import family_corners
from nas.search.cli import DEFAULTS, build_parser
from nas.supernet.config import SupernetConfig
from search_spaces.files import atomic_write_text
from search_spaces.hand_designed import hand_designed
from search_spaces.registry import get_space
from search_spaces.spec import ArchSpec
from trials.trial import Trial
from trials.trial_config import build_trial_config

TABLE = Path("docs/raw/resnest-bench/resnest_bench.csv")
COLUMNS = ("tag", "seed", "kind", "spec", "params", "macs", "latency_ms", "curve", "val_top1",
           "test_top1", "train_s", "epochs", "data", "image_size", "train_fraction", "command")
_SEARCH = build_parser()  # the quick start's own defaults
DATA, BATCH_SIZE = _SEARCH.get_default("data"), _SEARCH.get_default("batch_size")
SLICE = 60  # the slice's rows (--slice)
SLICE_SEED = 20  # the slice's samples: sample I comes from default_rng((SLICE_SEED, I))


def slice_spec(index: int) -> ArchSpec:
    """Slice sample `index`: a uniform sample of the small preset with the default supernet's
    fixed global axes (`SupernetConfig()` covers it)."""
    return SupernetConfig().sample(np.random.default_rng((SLICE_SEED, index)))


def corner_specs() -> dict[str, ArchSpec]:
    """The search's family anchors at the quick start's image size, by tag."""
    task = argparse.Namespace(num_classes=10, in_channels=1,
                              image_size=_SEARCH.get_default("image_size"))
    return {f"corner:{s.stem}-{'avgdown' if s.avg_down else 'conv'}": s
            for s in family_corners(get_space(_SEARCH.get_default("space")), task)}


def jobs(samples: int, seeded: int, seeds: tuple[int, ...], hand: bool,
         slices: int = 0, corners: bool = False) -> list[dict[str, Any]]:
    """Every row the table should hold, in the order they run: the hand-designed points and the
    seeded samples at the first seed, the seeded samples' other seeds, the corners at every
    seed, the other samples at the first seed, the slice at the first seed, then the
    hand-designed points' other seeds."""
    first, *others = seeds
    sampled = [{"tag": f"resnest:{i}", "kind": "sample", "arch": f"resnest:{i}"}
               for i in range(samples)]
    sliced = [{"tag": f"slice:{i}", "kind": "slice", "arch": slice_spec(i).to_dict(),
               "seed": first} for i in range(slices)]
    designed = [{"tag": name, "kind": "hand", "arch": spec.to_dict()}
                for name, spec in hand_designed().items()] if hand else []
    # The seeded samples' other seeds come early: the noise and the seed-to-seed ceiling are
    # measured on them, and every other figure is read against those. The hand-designed points'
    # other seeds only narrow their means, so they come last.
    out = [{**j, "seed": first} for j in designed + sampled[:seeded]]
    out += [{**j, "seed": s} for j in sampled[:seeded] for s in others]
    out += [{"tag": tag, "kind": "corner", "arch": spec.to_dict(), "seed": s}
            for tag, spec in (corner_specs() if corners else {}).items() for s in seeds]
    out += [{**j, "seed": first} for j in sampled[seeded:]]
    out += sliced
    out += [{**j, "seed": s} for j in designed for s in others]
    return out


# --smoke: the same code path on 8 px images and 5% of the train split, for the tests.
SMOKE = {"image_size": 8, "train_fraction": 0.05}


def protocol(epochs: int, smoke: bool = False) -> dict[str, Any]:
    return {"data": DATA, "epochs": epochs, "batch_size": BATCH_SIZE, **(SMOKE if smoke else {})}


def command(job: dict[str, Any], settings: dict[str, Any]) -> str:
    arch = job["arch"] if isinstance(job["arch"], str) else json.dumps(job["arch"])
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return shlex.join(["python", "-m", "trials.train", "--arch", arch, "--adapt", *flags,
                       "--seed", str(job["seed"]), "--threads", "1"])


def train_row(job: dict[str, Any], epochs: int, device: str,
              smoke: bool = False) -> dict[str, Any]:
    """Train one row's architecture with the protocol; its costs, curve and test accuracy."""
    torch.set_num_threads(1)
    settings = protocol(epochs, smoke)
    config = build_trial_config({"spec": job["arch"], **settings, "seed": job["seed"],
                                 "adapt": True, "device": device})
    trial = Trial(config, threads=1, include_test=True)
    start = time.perf_counter()
    curve = [round(float(r["val_top1"]), 5) for r in trial.run()]
    seconds = time.perf_counter() - start
    test = trial.trainer.evaluate("test")["top1"]
    latency = measure_costs(config.spec, image_size=config.image_size, device="cpu").latency_ms
    return {
        "tag": job["tag"], "seed": job["seed"], "kind": job["kind"],
        "spec": config.spec.to_json(), "params": int(config.costs["params"]),
        "macs": int(config.costs["macs"]), "latency_ms": round(float(latency), 4),
        "curve": json.dumps(curve), "val_top1": curve[-1], "test_top1": round(float(test), 5),
        "train_s": round(seconds, 2), "epochs": epochs, "data": DATA,
        "image_size": config.image_size, "train_fraction": config.train_fraction,
        "command": command(job, settings),
    }


def read_table(path: Path) -> list[dict[str, str]]:
    """The table's rows; a torn last line (a run killed mid-write) is dropped from the file."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not text.endswith("\n"):
        text = "".join(lines[:-1])
        atomic_write_text(path, text)
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and tuple(rows[0]) != COLUMNS:
        raise SystemExit(f"error: {path} has columns {tuple(rows[0])}, expected {COLUMNS}")
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.resnest_bench", description=__doc__.split(
        "\n")[0])
    p.add_argument("--out", type=Path, default=TABLE, help=f"the CSV (default: {TABLE})")
    p.add_argument("--samples", type=int, default=200, help="uniform samples (default: 200)")
    p.add_argument("--seeded", type=int, default=30,
                   help="samples also trained with the other seeds (default: 30)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds (default: 0 1 2)")
    p.add_argument("--slice", type=int, default=SLICE,
                   help="uniform samples with the default supernet's fixed axes, first seed "
                   f"only (default: {SLICE})")
    p.add_argument("--no-hand", dest="hand", action="store_false",
                   help="leave out the hand-designed family")
    p.add_argument("--no-corners", dest="corners", action="store_false",
                   help="leave out the search's four family anchors")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                   help=f"epochs per row (default: the search's, {DEFAULTS['epochs']})")
    p.add_argument("--workers", type=int, default=2, help="rows at once (default: 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto, a GPU "
                   "where torch sees one)")
    p.add_argument("--limit", type=int, default=None, help="run at most this many new rows")
    p.add_argument("--smoke", action="store_true", help="8 px, 5%% of train: for the tests")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["tag"], int(r["seed"])) for r in read_table(args.out)}
    todo = [j for j in jobs(args.samples, args.seeded, tuple(args.seeds), args.hand, args.slice,
                                 args.corners)
            if (j["tag"], j["seed"]) not in done][:args.limit]
    print(f"{len(done)} rows in {args.out}; {len(todo)} to train", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {pool.submit(train_row, j, args.epochs, args.device, args.smoke): j
                   for j in todo}
        for n, future in enumerate(as_completed(futures), 1):
            row = future.result()
            append_row(args.out, row)
            print(f"[{n}/{len(todo)}] {row['tag']} seed {row['seed']}: val {row['val_top1']:.4f} "
                  f"test {row['test_top1']:.4f} {int(row['macs']) / 1e6:.2f} MMACs "
                  f"{row['train_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["COLUMNS", "SLICE", "SLICE_SEED", "TABLE", "corner_specs", "jobs", "read_table",
           "slice_spec", "train_row"]

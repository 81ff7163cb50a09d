"""`python -m nas.supernet.train`: train a supernet (sandwich rule, in-place distillation) into a
checkpoint directory written every epoch; `--resume` continues it.

By default it runs through Ray Train (`trials.ray_runner.run_data_parallel`): one CPU worker on a
laptop; `--workers N --gpu` trains data-parallel on N GPUs, `--address auto` on a Ray cluster
(the directory must then be on storage every worker reaches). `--no-ray` trains in this process.
`nas.supernet.trainer` says what an epoch does and what the directory holds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nas.supernet.config import SupernetConfig
from nas.supernet.shrink import SCHEDULES
from nas.supernet.trainer import (
    SupernetDir,
    SupernetJob,
    SupernetTarget,
    SupernetTrainConfig,
    is_supernet_dir,
    read_manifest,
    resume_check,
    train_loop,
)
from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError
from search_spaces.registry import get_space, list_spaces
from trials import ray_runner
from trials.bundle import DATA_FORMS, IMAGE_SIZE_HELP, TRAIN_FRACTION_HELP
from trials.data import default_train_fraction, describe
from trials.trial import resolve_device

DEFAULTS = SupernetTrainConfig()
SMOKE = {"epochs": 2, "batch_size": 16, "max_batches": 3, "calib_batches": 2, "image_size": 8,
         "train_fraction": 0.05}
SUPPORTED_PRESET = "small"  # the one preset nas.supernet lays out


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m nas.supernet.train",
                      description="Train a supernet of a search space (one-shot NAS).")
    p.add_argument("--out", required=True,
                   help="checkpoint directory (required; new, or with --resume an existing one)")
    p.add_argument("--space", default="resnest", help=f"search space: {', '.join(list_spaces())}")
    p.add_argument("--preset", default=SUPPORTED_PRESET,
                   help="space bounds (the supernet covers the small preset only)")
    p.add_argument("--data", default="fashion-mnist-subset", help=DATA_FORMS)
    p.add_argument("--image-size", type=int, default=None,
                   help=f"training resolution in px (default: the data's: {IMAGE_SIZE_HELP}; "
                        f"--smoke {SMOKE['image_size']})")
    p.add_argument("--train-fraction", type=float, default=None,
                   help=f"share of the train split trained on (default: the data's: "
                        f"{TRAIN_FRACTION_HELP}; --smoke {SMOKE['train_fraction']})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default: {DEFAULTS.epochs}; --smoke {SMOKE['epochs']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch (default: {DEFAULTS.batch_size}; --smoke "
                        f"{SMOKE['batch_size']})")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr,
                   help="peak learning rate (SGD, Nesterov momentum 0.9; warm-up then cosine)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay,
                   help="weight decay of conv and linear weights")
    p.add_argument("--warmup-epochs", type=float, default=DEFAULTS.warmup_epochs,
                   help="linear learning-rate warm-up")
    p.add_argument("--n-random", type=int, default=DEFAULTS.n_random,
                   help="random sub-networks per step besides the largest and the smallest")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=DEFAULTS.distill,
                   help="train the smaller sub-networks on the largest's predictions")
    p.add_argument("--shrink", default=DEFAULTS.shrink, metavar="|".join(SCHEDULES),
                   help="progressive shrinking: the smallest and random sub-networks come from "
                        "a part of the space that opens in equal shares of the steps; ofa: the "
                        "largest, then depth, width, cardinality, radix; family-first: each radix "
                        "family's largest, then depth, width, cardinality, every radix "
                        f"(default: {DEFAULTS.shrink}, the whole space from the start)")
    p.add_argument("--max-batches", type=int, default=None,
                   help=f"steps per epoch at most, 0 for the whole train split (default: 0; "
                        f"--smoke {SMOKE['max_batches']})")
    p.add_argument("--calib-batches", type=int, default=None,
                   help=f"training batches each scored sub-network's BN statistics are "
                        f"recalibrated on (default: {DEFAULTS.calib_batches}; --smoke "
                        f"{SMOKE['calib_batches']})")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of weights and draws")
    p.add_argument("--resume", action="store_true",
                   help="continue the training in --out (its stored settings; flags given must "
                        "match them)")
    p.add_argument("--no-ray", action="store_true",
                   help="train in this process instead of a Ray Train worker")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (data parallel)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (Ray Train)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs of each worker")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster, host:port or auto (default: start a local Ray)")
    p.add_argument("--max-failures", type=int, default=0,
                   help="restarts of the worker group after a failure (it resumes from --out)")
    p.add_argument("--device", default="auto",
                   help="with --no-ray: auto, cpu or cuda[:N] (auto: cuda when available)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for tests and a first look (8 px, 2 epochs of 3 batches)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output")
    return p


def job_from_args(args: argparse.Namespace) -> SupernetJob:
    """Every flag checked and the job decided, without writing anything (the data is described,
    not loaded)."""
    smoke = SMOKE if args.smoke else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else smoke.get(name, default)

    space = get_space(args.space, args.preset)
    if space.preset.name != SUPPORTED_PRESET:
        raise UserError(f"--preset {space.preset.name}: the supernet covers the "
                        f"{SUPPORTED_PRESET} preset only")
    fraction = pick("train_fraction", default_train_fraction(args.data))
    if not 0 < fraction <= 1:
        raise UserError(f"--train-fraction must be in (0, 1], got {fraction:g}")
    shape = describe(args.data, pick("image_size", None))
    config = SupernetConfig.from_preset(space.preset, num_classes=shape.num_classes,
                                        in_channels=shape.in_channels)
    need = config.smallest().min_image_size
    if shape.image_size < need:
        raise UserError(f"--image-size {shape.image_size} is too small for the supernet: its "
                        f"networks need at least {need} px")
    try:
        train = SupernetTrainConfig(
            epochs=pick("epochs", DEFAULTS.epochs), batch_size=pick("batch_size",
                                                                     DEFAULTS.batch_size),
            lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
            n_random=args.n_random, distill=args.distill, seed=args.seed,
            max_batches=pick("max_batches", DEFAULTS.max_batches),
            calib_batches=pick("calib_batches", DEFAULTS.calib_batches), shrink=args.shrink)
    except UserError as err:  # name the flag, not the field
        text = str(err)
        for f in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "n_random",
                  "max_batches", "calib_batches", "seed", "shrink"):
            if text.startswith(f + " "):
                text = "--" + f.replace("_", "-") + text[len(f):]
                break
        raise UserError(text) from None
    target = SupernetTarget(space=args.space, preset=space.preset.name, data=args.data,
                            image_size=shape.image_size, train_fraction=float(fraction))
    return SupernetJob(target, config, train)


def check_runtime(args: argparse.Namespace, job: SupernetJob) -> None:
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.cpus_per_worker <= 0:
        raise UserError(f"--cpus-per-worker must be positive, got {args.cpus_per_worker:g}")
    if args.max_failures < 0:
        raise UserError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.no_ray and (args.workers != 1 or args.gpu or args.address):
        raise UserError("--no-ray trains in this process: --workers, --gpu and --address need Ray")
    if args.no_ray:
        resolve_device(args.device)
    elif args.device != "auto":
        raise UserError("--device applies with --no-ray; Ray Train workers use the GPU they are "
                        "given (--gpu), else the CPU")
    if args.gpu and not args.address and torch.cuda.device_count() < args.workers:
        raise UserError(f"--gpu --workers {args.workers} needs {args.workers} GPU(s); this "
                        f"machine has {torch.cuda.device_count()}")
    if job.train.batch_size < 2 * args.workers:
        raise UserError(f"--batch-size {job.train.batch_size} is too small for --workers "
                        f"{args.workers} (each worker needs >= 2 images per step)")


def train_supernet(job: SupernetJob, out: Path, *, ray: bool = True, workers: int = 1,
                   use_gpu: bool = False, cpus_per_worker: float = 1.0,
                   address: str | None = None, max_failures: int = 0, device: str = "auto",
                   verbose: bool = False,
                   report: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Train (or continue) `job` into `out`: in this process, or on Ray Train workers."""
    args = {"job": job.to_dict(), "out": str(Path(out).resolve())}
    if not ray:
        train_loop(args, device=str(resolve_device(device)), report=report)
        return
    ray_runner.connect(address, verbose=verbose)
    args["threads"] = max(1, int(cpus_per_worker))
    ray_runner.run_data_parallel(train_loop, args, storage_path=SupernetDir(Path(out)).ray,
                                 num_workers=workers, use_gpu=use_gpu,
                                 cpus_per_worker=cpus_per_worker, max_failures=max_failures,
                                 name="supernet")


def given_flags(argv: Sequence[str]) -> set[str]:
    parser, unset = build_parser(), object()
    given = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(
        vars(parser.parse_args(["--out", "x"])), unset)))
    return {dest for dest, value in vars(given).items() if value is not unset}


# Flags whose value a resumed training keeps, and where the job holds it.
RESUMED = {"space": ("target", "space"), "preset": ("target", "preset"),
           "data": ("target", "data"), "image_size": ("target", "image_size"),
           "train_fraction": ("target", "train_fraction"), "epochs": ("train", "epochs"),
           "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
           "weight_decay": ("train", "weight_decay"),
           "warmup_epochs": ("train", "warmup_epochs"), "n_random": ("train", "n_random"),
           "distill": ("train", "distill"), "max_batches": ("train", "max_batches"),
           "calib_batches": ("train", "calib_batches"), "seed": ("train", "seed"),
           "shrink": ("train", "shrink")}


def resumed_job(out: Path, args: argparse.Namespace, given: set[str]) -> SupernetJob:
    """The stored job of `out`; flags given that differ from it are refused, naming both."""
    stored = read_manifest(out, "--out").job
    if "smoke" in given:
        given = given | {k for k in SMOKE if k in RESUMED}
    fresh = job_from_args(args).to_dict()
    old = stored.to_dict()
    differ = [f"--{dest.replace('_', '-')} gives {fresh[part][key]!r}, the checkpoint has "
              f"{old[part][key]!r}" for dest, (part, key) in RESUMED.items()
              if dest in given and fresh[part][key] != old[part][key]]
    if differ:
        raise UserError(f"cannot resume {out} with other settings ({'; '.join(differ)})")
    return stored


def run(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.resume:
        job = resumed_job(out, args, given_flags(argv))
        manifest = resume_check(out, job)
        if manifest is not None and manifest.complete:
            print(f"nothing left to train: {out} holds all {job.train.epochs} epochs")
            return 0
    else:
        job = job_from_args(args)
        if is_supernet_dir(out):
            raise UserError(f"{out} already holds a supernet; pass --resume to continue it or "
                            "choose another --out")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"--out {out} exists and is not an empty directory")
    check_runtime(args, job)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    target = job.target
    where = "in this process" if args.no_ray else (
        f"on {args.workers} Ray Train worker(s){' with a GPU each' if args.gpu else ''}")
    print(f"training a supernet of {target.space} ({target.preset}) on {target.data} "
          f"({target.image_size} px, {target.train_fraction:g} of train): "
          f"{job.train.epochs} epochs {where} -> {out}", flush=True)

    def report(record: dict[str, Any]) -> None:
        scores = ", ".join(f"{k[9:]} {v:.1%}" for k, v in record.items()
                           if k.startswith("val_top1_"))
        print(f"epoch {record['epoch']}/{job.train.epochs}: loss largest "
              f"{record['train_loss_largest']:.3f}, val (recalibrated) {scores}, "
              f"{record['epoch_seconds']:.1f}s", flush=True)

    start = read_manifest(out).epoch if is_supernet_dir(out) else 0
    try:
        train_supernet(job, out, ray=not args.no_ray, workers=args.workers, use_gpu=args.gpu,
                       cpus_per_worker=args.cpus_per_worker, address=args.address,
                       max_failures=args.max_failures, device=args.device,
                       verbose=args.verbose, report=report)
    except BaseException:
        if made and not is_supernet_dir(out):  # nothing finished: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    manifest = read_manifest(out)
    if not args.no_ray:  # the workers' own lines stay on the workers (--verbose shows them)
        for record in manifest.curve[start:]:
            report(record)
    last = manifest.curve[-1] if manifest.curve else {}
    print(f"done: epoch {manifest.epoch}/{job.train.epochs}, largest "
          f"{last.get('val_top1_largest', 0):.1%}, smallest {last.get('val_top1_smallest', 0):.1%}"
          f" (val, BN recalibrated) -> {SupernetDir(out).manifest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SMOKE", "build_parser", "job_from_args", "main", "train_supernet"]

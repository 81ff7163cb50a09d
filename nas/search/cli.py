"""`python -m nas.search`: multi-objective architecture search on Ray Tune with Optuna.

With only `--space resnest` it searches the Fashion-MNIST subset shipped in the package within a
few minutes on a laptop CPU; the same command with `--data cifar10:PATH --gpus-per-trial 0.5
--address auto` runs on a GPU cluster. Everything the run decides is in OUT/NAME (see
`nas.experiment`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from nas.experiment import (
    ESTIMATORS,
    ExperimentConfig,
    ExperimentDir,
    TrialRecord,
    close_storage,
    driver_lock,
    load_config,
    open_storage,
    prepare_directory,
    read_trials_csv,
    study_location,
)
from nas.latency.parts import space_parts
from nas.latency.table import LatencyTable, file_digest, load_table
from nas.models.costs import static_costs
from nas.models.latency import BACKENDS, PRECISIONS, LatencySettings, check_backend_available
from nas.search import estimator as supernet_estimator
from nas.search.anchor import ANCHORS, anchor_specs, corner_specs
from nas.search.controller import CONSTRAINT_COLUMNS, SearchController, adapt_to_task
from nas.search.objectives import OBJECTIVES, Objective, parse_objectives
from nas.search.recovery import check_same_experiment
from nas.search.strategy import PRUNERS, SAMPLERS, make_pruner, make_sampler
from nas.supernet.shrink import SCHEDULES, schedule
from nas.supernet.train import train_supernet
from nas.supernet.trainer import read_manifest, resume_check
from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from search_spaces.registry import get_space, list_presets, list_spaces, named_point
from search_spaces.resnest_space import ResNeStSpace
from search_spaces.spec import ArchSpec
from trials import ray_runner
from trials.bundle import DATA_FORMS, IMAGE_SIZE_HELP, TRAIN_FRACTION_HELP
from trials.data import default_train_fraction, describe, fashion_mnist_dir, parse_data_spec
from trials.training import TrainConfig
from trials.trial_config import TRIAL_DEFAULTS, TrialConfig

# The budget flags default to None so `--resume` can tell "given" from "not given".
DEFAULTS = {"trials": 32, "epochs": 4, "time_budget": "4m"}
SMOKE = {"trials": 4, "epochs": 2, "time_budget": "2m", "image_size": 8}
LATENCY_RUNS = {"warmup": 5, "runs": 20}  # a trial's latency measurement (smoke: 1 and 3)
NOISE = ("one latency measurement at a time per machine (a node-wide lock); trials training "
         "meanwhile keep running: docs/benchmarks.md, 'Latency (issue 22)', states the inflation")


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds (positive)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise UserError(f"--time-budget must look like 90s, 10m or 1h, got {text!r}")
    seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise UserError(f"--time-budget must be positive, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m nas.search",
        description="Search ResNeSt-family architectures for accuracy versus cost.",
    )
    p.add_argument("--space", default="resnest", help=f"search space: {', '.join(list_spaces())}")
    p.add_argument("--preset", default=None,
                   help=f"space bounds: {', '.join(list_presets())} (default: the space's own)")
    p.add_argument("--data", default=TRIAL_DEFAULTS["data"], help=DATA_FORMS)
    p.add_argument("--image-size", type=int, default=None,
                   help=f"training resolution in px (default: the data's: {IMAGE_SIZE_HELP})")
    p.add_argument("--train-fraction", type=float, default=None,
                   help="share of the train split each trial trains on (default: the data's: "
                        f"{TRAIN_FRACTION_HELP})")
    p.add_argument("--objectives", default="accuracy,macs",
                   help=f"comma list of {', '.join(OBJECTIVES)} (accuracy is maximized)")
    p.add_argument("--trials", type=int, default=None,
                   help=f"architectures to train (default {DEFAULTS['trials']})")
    p.add_argument("--time-budget", default=None,
                   help=f"wall-clock budget, e.g. 4m (default {DEFAULTS['time_budget']})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs at full fidelity (default {DEFAULTS['epochs']})")
    p.add_argument("--sampler", default="tpe", help=f"one of {', '.join(SAMPLERS)}")
    p.add_argument("--pruner", default="pareto", help=f"one of {', '.join(PRUNERS)}")
    p.add_argument("--max-macs", type=float, default=None,
                   help="constraint on MACs per image (default: none)")
    p.add_argument("--max-params", type=float, default=None,
                   help="constraint on parameters (default: none)")
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="constraint on latency (measured on each trial's worker before it "
                        "trains, or predicted by --latency-table; default: none)")
    p.add_argument("--latency-backend", default=None,
                   help=f"how latency is measured: {', '.join(BACKENDS)} (default: torch, or "
                        "the table's)")
    p.add_argument("--latency-batch-size", type=int, default=None,
                   help="images per timed forward (default: 1, or the table's)")
    p.add_argument("--latency-threads", type=int, default=None,
                   help="CPU threads of the measurement (default: the trial's CPUs, or the "
                        "table's)")
    p.add_argument("--latency-precision", default=None,
                   help=f"{', '.join(PRECISIONS)} (default: fp32, or the table's)")
    p.add_argument("--latency-table", default=None,
                   help="predict latency from this table (python -m nas.latency profile, run on "
                        "the target device) instead of measuring it (default: measure)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial holds")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional GPUs allowed")
    p.add_argument("--concurrency", type=int, default=None,
                   help="trials at once (default: as many as fit on Ray's free CPUs and, with "
                        "--gpus-per-trial, its GPUs)")
    p.add_argument("--address", default=None, help="join a Ray cluster, host:port or auto "
                   "(default: start a local Ray)")
    p.add_argument("--storage", default="",
                   help="Optuna database URL (default: the journal file OUT/NAME/study.journal)")
    p.add_argument("--out", default="experiments", help="directory holding experiments")
    p.add_argument("--name", default="resnest", help="experiment (and study) name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and the training")
    p.add_argument("--seed-points", default="",
                   help="named points to evaluate first, comma separated")
    p.add_argument("--anchor", choices=ANCHORS, default="families",
                   help="cheap corners evaluated first when an objective is a cost: the cheapest "
                        "of each (stem, avg_down) family, the space's cheapest only, or none")
    p.add_argument("--no-anchor", dest="anchor", action="store_const", const="none",
                   help="same as --anchor none")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a trial lost with its worker")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="training batch of each trial")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: sgd 0.1, adamw 0.002)")
    p.add_argument("--estimator", default="train",
                   help=f"how candidates are scored: {', '.join(ESTIMATORS)} (train: each trains; "
                        "supernet: inherited weights of one supernet after BN recalibration)")
    p.add_argument("--supernet", default=None, metavar="DIR",
                   help="with --estimator supernet: reuse this trained supernet (python -m "
                        "nas.supernet.train) (default: train one into OUT/NAME/supernet)")
    p.add_argument("--supernet-epochs", type=int, default=None,
                   help="with --estimator supernet: epochs of the supernet the search trains "
                        f"(default {supernet_estimator.SUPERNET_EPOCHS}; --smoke "
                        f"{supernet_estimator.SMOKE_SUPERNET['epochs']} of 3 batches)")
    p.add_argument("--supernet-shrink", default=None, metavar="|".join(SCHEDULES),
                   help="with --estimator supernet: progressive shrinking of the supernet the "
                        "search trains (python -m nas.supernet.train --shrink) (default off)")
    p.add_argument("--finetune", type=int, default=None, metavar="K",
                   help="with --estimator supernet: then train the estimated front's best K per "
                        "candidate and report the front on those (default 0; may change on "
                        "--resume)")
    p.add_argument("--finetune-from", default=None,
                   help="inherited (start from the supernet's weights) or scratch (default "
                        "inherited)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget for tests and a first look (same code path)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output")
    return p


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be positive, got {value:g}")


def config_from_args(args: argparse.Namespace) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Validate every flag (before anything is written) and build the experiment's config."""
    fallback = {**DEFAULTS, **SMOKE} if args.smoke else DEFAULTS
    trials = args.trials if args.trials is not None else fallback["trials"]
    epochs = args.epochs if args.epochs is not None else fallback["epochs"]
    budget = parse_duration(args.time_budget or fallback["time_budget"])
    for name, value in (("--trials", trials), ("--epochs", epochs),
                        ("--cpus-per-trial", args.cpus_per_trial),
                        ("--batch-size", args.batch_size), ("--max-macs", args.max_macs),
                        ("--max-params", args.max_params),
                        ("--max-latency-ms", args.max_latency_ms),
                        ("--concurrency", args.concurrency), ("--lr", args.lr),
                        ("--image-size", args.image_size)):
        _positive(name, value)
    if args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial:g}")
    if args.max_failures < 0:
        raise UserError(f"--max-failures must be >= 0, got {args.max_failures}")
    objectives = parse_objectives(args.objectives)
    if args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    make_pruner(args.pruner, objectives, epochs=epochs)  # validates name and combination
    space = get_space(args.space, args.preset)
    seed_points = tuple(n.strip() for n in args.seed_points.split(",") if n.strip())
    for name in seed_points:
        named_point(name)
    constraints = {
        k: float(v) for k, v in (("max_macs", args.max_macs), ("max_params", args.max_params),
                                 ("max_latency_ms", args.max_latency_ms)) if v is not None
    }
    data = resolved_data(args.data)
    fraction = (args.train_fraction if args.train_fraction is not None
                else default_train_fraction(args.data))
    if not 0 < fraction <= 1:
        raise UserError(f"--train-fraction must be in (0, 1], got {fraction:g}")
    latency = latency_config(args, tuple(o.name for o in objectives), constraints)
    train = {"batch_size": args.batch_size}
    if args.lr is not None:
        train["lr"] = args.lr
    supernet, finetune, finetune_from = estimator_config(args, space.preset.name)
    if supernet and latency.get("source") == "worker":
        raise UserError("--estimator supernet scores candidates on the driver, where no worker "
                        "measures latency: predict it with --latency-table (python -m "
                        "nas.latency profile)")
    config = ExperimentConfig(
        name=args.name, space=args.space, preset=space.preset.name, data=data,
        image_size=args.image_size or fallback.get("image_size", 0), objectives=tuple(
            o.name for o in objectives), epochs=epochs, trials=trials, time_budget_s=budget,
        sampler=args.sampler, pruner=args.pruner, seed=args.seed, storage=args.storage,
        constraints=constraints, seed_points=seed_points, anchor=args.anchor, train=train,
        train_fraction=fraction, latency=latency, estimator=args.estimator,
        supernet=supernet, finetune=finetune, finetune_from=finetune_from,
    )
    runtime = {"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
               "concurrency": args.concurrency, "address": args.address,
               "max_failures": args.max_failures, "verbose": args.verbose}
    return config, runtime


def estimator_config(args: argparse.Namespace,
                     preset: str) -> tuple[dict[str, Any], int, str]:
    """experiment.json's `supernet`, `finetune` and `finetune_from`, checked before anything is
    written (a --supernet DIR is checked against the search once its data is described)."""
    if args.estimator not in ESTIMATORS:
        raise UserError(f"unknown estimator {args.estimator!r}; valid estimators: "
                        f"{', '.join(ESTIMATORS)}")
    flags = (("--supernet", args.supernet), ("--supernet-epochs", args.supernet_epochs),
             ("--supernet-shrink", args.supernet_shrink),
             ("--finetune", args.finetune), ("--finetune-from", args.finetune_from))
    if args.estimator == "train":
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise UserError(f"{given[0]} applies only with --estimator supernet")
        return {}, 0, "inherited"
    if preset != supernet_estimator.SUPPORTED_PRESET:
        raise UserError(f"--estimator supernet: the supernet covers the "
                        f"{supernet_estimator.SUPPORTED_PRESET} preset only, not {preset}")
    for flag, value in flags[1:3]:
        if args.supernet is not None and value is not None:
            raise UserError(f"{flag} sets the supernet the search trains; --supernet DIR "
                            "reuses a trained one: give one of them")
    if args.supernet_shrink is not None:
        schedule(args.supernet_shrink, "--supernet-shrink")
    _positive("--supernet-epochs", args.supernet_epochs)
    if args.finetune is not None and args.finetune < 0:
        raise UserError(f"--finetune must be >= 0, got {args.finetune}")
    finetune_from = args.finetune_from or "inherited"
    if finetune_from not in ("inherited", "scratch"):
        raise UserError(f"--finetune-from must be inherited or scratch, got {finetune_from!r}")
    smoke = dict(supernet_estimator.SMOKE_SUPERNET) if args.smoke else {}
    epochs = args.supernet_epochs or smoke.pop("epochs", supernet_estimator.SUPERNET_EPOCHS)
    smoke.pop("epochs", None)
    supernet: dict[str, Any] = {
        "dir": str(Path(args.supernet).resolve()) if args.supernet is not None else None,
        "train": {"epochs": epochs, "seed": args.seed, **smoke}}
    if args.supernet_shrink is not None:
        supernet["train"]["shrink"] = args.supernet_shrink
    return supernet, args.finetune or 0, finetune_from


LATENCY_FLAGS = (("--latency-backend", "latency_backend", "backend"),
                 ("--latency-batch-size", "latency_batch_size", "batch_size"),
                 ("--latency-threads", "latency_threads", "threads"),
                 ("--latency-precision", "latency_precision", "precision"))


def latency_config(args: argparse.Namespace, objectives: tuple[str, ...],
                   constraints: dict[str, float]) -> dict[str, Any]:
    """How the search takes latency (experiment.json's `latency`), checked before anything is
    written: measured on each trial's worker with these settings, or predicted from a table."""
    given = [flag for flag, dest, _ in LATENCY_FLAGS if getattr(args, dest) is not None]
    given += ["--latency-table"] if args.latency_table is not None else []
    if "latency" not in objectives and "max_latency_ms" not in constraints:
        if given:
            raise UserError(f"{given[0]} applies only when latency is an objective "
                            "(--objectives accuracy,latency) or --max-latency-ms a constraint")
        return {}
    for flag, value in (("--latency-batch-size", args.latency_batch_size),
                        ("--latency-threads", args.latency_threads)):
        _positive(flag, value)
    if args.latency_table is not None:
        path = Path(args.latency_table)
        table = load_table(path)
        for flag, dest, key in LATENCY_FLAGS:
            value = getattr(args, dest)
            if value is not None and value != getattr(table.settings, key):
                raise UserError(f"{flag} {value} differs from latency table {path}, measured "
                                f"with {key} {getattr(table.settings, key)}; profile again with "
                                "that setting or leave the flag out")
        validation = table.validation
        return {"source": "table", "table": str(path.resolve()), "sha256": file_digest(path),
                **table.settings.to_dict(), "constant_ms": table.constant_ms,
                "definition": "predicted: the table's constant plus the sum of its parts, each "
                              f"timed as: {table.settings.describe()}",
                "table_machine": table.machine,
                "table_validation": {k: validation[k] for k in ("mape_percent", "spearman")
                                     if k in validation}}
    runs = {"warmup": 1, "runs": 3} if args.smoke else LATENCY_RUNS
    # Checked as the trials will run it (on their GPU when they hold one); the package is
    # checked here, on the driver, so a missing extra is named once, not on every worker.
    settings = LatencySettings(backend=args.latency_backend or "torch",
                               batch_size=args.latency_batch_size or 1,
                               threads=args.latency_threads or 1,
                               precision=args.latency_precision or "fp32",
                               device="cuda" if args.gpus_per_trial > 0 else "cpu", **runs)
    check_backend_available(replace(settings, device="cpu"))
    values = {**settings.to_dict(), "threads": args.latency_threads}
    del values["device"]
    threads = (f"{args.latency_threads} thread(s)" if args.latency_threads
               else "the trial's CPUs as threads")
    return {"source": "worker", **values,
            "device": "the trial's: cuda when it holds a GPU, else cpu",
            "definition": f"measured on each trial's worker before it trains: median of "
                          f"{settings.runs} timed forwards after {settings.warmup} warm-up, "
                          f"backend {settings.backend}, batch {settings.batch_size}, "
                          f"{settings.precision}, {threads}",
            "noise": NOISE}


def worker_latency(config: ExperimentConfig) -> dict[str, Any] | None:
    """The settings a trial's worker measures latency with (None: it measures none)."""
    if config.latency.get("source") != "worker":
        return None
    return {k: config.latency[k] for k in ("backend", "batch_size", "threads", "precision",
                                           "warmup", "runs")}


def experiment_table(config: ExperimentConfig, space: ResNeStSpace) -> LatencyTable | None:
    """The experiment's latency table, checked against the search (space, image size, task,
    backend, every part the space can produce, unchanged since the experiment began)."""
    if config.latency.get("source") != "table":
        return None
    path = config.latency["table"]
    table = load_table(path)
    if file_digest(path) != config.latency["sha256"]:
        raise UserError(f"latency table {path} changed since this experiment began (its "
                        "SHA-256 differs from experiment.json's); restore it")
    table.check_for(preset=space.preset.name, image_size=config.image_size,
                    backend=config.latency["backend"], num_classes=config.num_classes,
                    in_channels=config.in_channels, source=f"latency table {path}")
    needed = space_parts(space, config.image_size, config.num_classes, config.in_channels)
    missing = table.missing(sorted(needed))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"latency table {path} lacks part {missing[0]}{more}, which space "
                        f"{config.space} (preset {space.preset.name}) can produce at "
                        f"{config.image_size} px; profile the whole space (without "
                        "--only-sampled)")
    return table


def resolved_data(text: str) -> str:
    """The data string trials receive: `fashion-mnist` without a path names the driver's copy
    (Debian's files, else the shipped subset), so every worker reads the same images."""
    kind, path = parse_data_spec(text)
    return f"{kind}:{fashion_mnist_dir()}" if kind == "fashion-mnist" and path is None else text


def cost_function(config: ExperimentConfig, table: LatencyTable | None = None) -> Any:
    """Params and MACs per spec at the search's resolution; peak memory only when something uses
    it (traced: it costs far more than the counts). Latency is predicted here from `table`;
    without one it is measured by each trial's worker before training, never by the driver."""
    needs_memory = "memory" in config.objectives

    def costs(spec: ArchSpec) -> dict[str, float]:
        record = static_costs(spec, image_size=config.image_size, memory=needs_memory)
        out = {"params": float(record.params), "macs": float(record.macs)}
        if needs_memory:
            out["peak_memory_bytes"] = float(record.peak_memory_bytes)
        if table is not None:
            out["latency_ms"] = table.predict(spec)
        return out

    return costs


def check_satisfiable(space: ResNeStSpace, config: ExperimentConfig, costs: Any) -> None:
    """Refuse constraints that no architecture of the space meets, before any training (a
    latency measured on the workers is checked there, each trial before it trains)."""
    if not config.constraints:
        return
    rng = np.random.default_rng(config.seed)
    candidates = corner_specs(space, config) + [
        space.sample(rng).replace(num_classes=config.num_classes, in_channels=config.in_channels)
        for _ in range(16)
    ]
    table = [costs(s) for s in candidates]
    known = {f: v for f, v in config.constraints.items() if CONSTRAINT_COLUMNS[f] in table[0]}
    for flag, limit in known.items():
        column = CONSTRAINT_COLUMNS[flag]
        cheapest = min(c[column] for c in table)
        if cheapest > limit:
            raise UserError(
                f"--{flag.replace('_', '-')} {limit:g} is unsatisfiable: the cheapest "
                f"architecture of space {space.name} found has {column} {cheapest:.4g} "
                f"at {config.image_size} px"
            )
    if not any(all(c[CONSTRAINT_COLUMNS[f]] <= lim for f, lim in known.items()) for c in table):
        raise UserError(
            "the constraints contradict each other: no sampled architecture meets all of "
            + ", ".join(f"--{f.replace('_', '-')} {v:g}" for f, v in known.items())
        )


def local_cpus() -> int:
    """CPUs this process may run on (what a local Ray offers, before Ray starts)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def check_cpus(per_trial: float, available: float, address: str | None) -> None:
    """A trial asking for more CPUs than any node has would wait in Tune's queue until the
    budget runs out: refuse it locally (a cluster's autoscaler may add bigger nodes: a note)."""
    if per_trial <= available + 1e-9:
        return
    where = "this machine" if not address else "any node of the Ray cluster (now)"
    message = (f"--cpus-per-trial {per_trial:g} asks for more CPUs per trial than {where} has "
               f"({available:g})")
    if not address:
        raise UserError(f"{message}; use at most --cpus-per-trial {available:g}")
    print(f"note: {message}; trials wait until bigger nodes join", file=sys.stderr)


def check_gpus(per_trial: float, available: float, address: str | None) -> None:
    """A GPU request this machine cannot meet would leave Tune waiting until the budget runs
    out: refuse it locally (a cluster's autoscaler may still add GPUs, so there it is a note).
    GPUs left idle by `--gpus-per-trial 0` get a note: trials then train on the CPUs."""
    if per_trial > available:
        where = "this machine" if not address else "any node of the Ray cluster (now)"
        message = (f"--gpus-per-trial {per_trial:g} asks for more GPUs per trial than {where} "
                   f"has ({available:g})")
        if not address:
            raise UserError(message + "; use --gpus-per-trial 0 to train on the CPUs")
        print(f"note: {message}; trials wait until nodes with GPUs join", file=sys.stderr)
    elif per_trial == 0 and available > 0:
        print(f"note: Ray sees {available:g} GPU(s) but --gpus-per-trial is 0, so trials train on "
              "the CPUs; --gpus-per-trial 0.25 runs four small candidates per GPU", file=sys.stderr)


def default_concurrency(cpus: float, gpus: float, cpus_per_trial: float,
                        gpus_per_trial: float) -> int:
    """Trials that fit at once on the free CPUs and, when trials take GPUs, on the free GPUs.

    Counting CPUs alone over-asks on a GPU box: the surplus waits in Tune's queue, sampled before
    any running trial reports, until the time budget cuts it off. With no free GPU yet (a
    cluster whose GPU nodes an autoscaler has still to add), the CPUs decide."""
    fit = int(cpus / cpus_per_trial + 1e-9)
    if 0 < gpus_per_trial < 1 and gpus > 0:  # Ray packs a fraction within one GPU
        fit = min(fit, int(gpus + 1e-9) * int(1 / gpus_per_trial + 1e-9))
    elif gpus_per_trial >= 1 and gpus > 0:
        fit = min(fit, int(gpus / gpus_per_trial + 1e-9))
    return max(1, fit)


class SearchStopped(Exception):
    """The study or trials.csv stopped accepting writes mid-search (one line, exit 1)."""


def run(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    config, runtime = config_from_args(args)
    exp = prepare_directory(Path(args.out), config.name, args.resume)
    with ExitStack() as held:  # the driver lock and the storage, released however run ends
        if args.resume:
            stored = load_config(exp)
            check_resume_flags(exp, stored, config, given_flags(argv))
            config = replace(
                stored,
                trials=args.trials if args.trials is not None else stored.trials,
                time_budget_s=parse_duration(args.time_budget) if args.time_budget
                else stored.time_budget_s,
                finetune=args.finetune if args.finetune is not None else stored.finetune,
            )
            _note(held.enter_context(driver_lock(exp)))
        try:
            return _search(args, config, runtime, exp, held)
        except KeyboardInterrupt:  # before the search started: nothing to continue
            print("interrupted", file=sys.stderr)
            return 130


def _search(args: argparse.Namespace, config: ExperimentConfig, runtime: dict[str, Any],
            exp: Path, held: ExitStack) -> int:
    """Check everything the search needs, open (or create) the experiment, run it on Ray."""
    shape = describe(config.data, config.image_size or None)  # no image is loaded
    config = replace(config, image_size=shape.image_size, num_classes=shape.num_classes,
                     in_channels=shape.in_channels)
    space = get_space(config.space, config.preset)
    smallest = min(s.min_image_size for s in corner_specs(space, config))
    if config.image_size < smallest:
        raise UserError(
            f"--image-size {config.image_size} is too small for space {space.name}: its "
            f"networks need at least {smallest} px"
        )
    objectives = parse_objectives(list(config.objectives))
    costs = cost_function(config, experiment_table(config, space))
    if config.estimator == "supernet":  # the sampler proposes what the supernet covers
        covered = supernet_estimator.supernet_config_of(config)  # --supernet DIR checked here
        supernet_estimator.check_covered(
            {n: adapt_to_task(named_point(n), config, space.preset.input_regime)
             for n in config.seed_points}, covered)
        space = supernet_estimator.covered_space(covered, config.space)
    check_satisfiable(space, config, costs)
    if not runtime["address"]:  # local Ray sees the GPUs torch sees; refuse before starting it
        check_gpus(runtime["gpus_per_trial"], torch.cuda.device_count(), None)
        check_cpus(runtime["cpus_per_trial"], local_cpus(), None)
    # The default journal lives in the experiment directory; a database is checked before it.
    storage = check_storage(config, exp, args.resume) if args.resume or config.storage else None
    controller = None
    if args.resume:  # nothing is created: the study and trials.csv are reconciled first
        held.callback(close_storage, storage)
        check_same_experiment(optuna.load_study(study_name=config.name, storage=storage)
                              .get_trials(), read_records(exp), exp,
                              study_location(exp, config.storage))
        study = open_study(config, exp, objectives, True, storage, runtime["verbose"])
        controller = make_controller(config, exp, study, space, objectives, costs, True)
        if controller.rebuilt:
            print(f"note: rebuilt {controller.rebuilt} row(s) of {ExperimentDir(exp).trials_csv} "
                  f"from the study {study_location(exp, config.storage)}", file=sys.stderr)
        if not controller.budget_left() and config.estimator == "train":
            print(f"nothing left to run: {exp} has started {controller.launched} of "
                  f"{config.trials} architectures and none waits to run again; pass a larger "
                  "--trials to search further")
            return 0
    ray_runner.connect(runtime["address"], verbose=runtime["verbose"])
    largest_cpus, largest_gpus = ray_runner.largest_node()
    check_cpus(runtime["cpus_per_trial"], largest_cpus, runtime["address"])
    if runtime["address"]:
        check_gpus(runtime["gpus_per_trial"], largest_gpus, runtime["address"])
    if controller is None:
        storage, study = create_experiment(config, exp, objectives, held, runtime["verbose"])
        controller = make_controller(config, exp, study, space, objectives, costs, False)
    concurrency = runtime["concurrency"] or default_concurrency(
        ray_runner.available_cpus(), ray_runner.available_gpus(), runtime["cpus_per_trial"],
        runtime["gpus_per_trial"])
    share = "" if config.train_fraction == 1 else f", {config.train_fraction:g} of train"
    print(f"searching {space.name} on {config.data} ({config.image_size} px{share}): "
          f"{config.trials} trials, {config.epochs} epochs, {config.time_budget_s:.0f}s budget, "
          f"objectives {','.join(config.objectives)}, sampler {config.sampler}, "
          f"pruner {config.pruner}, {concurrency} at once -> {exp}", flush=True)
    if config.latency:
        print(f"latency: {config.latency['definition']}", flush=True)
    if config.estimator == "supernet":
        return _estimate(config, exp, controller, objectives, runtime, concurrency, args)
    if not _run_on_tune(controller, config, exp, runtime, concurrency, args):
        return 130
    controller.close_live("stopped at the end of the search")
    if controller.failure:
        raise SearchStopped(controller.failure)
    print_front(controller, objectives)
    return 0


def _run_on_tune(controller: Any, config: ExperimentConfig, exp: Path, runtime: dict[str, Any],
                 concurrency: int, args: argparse.Namespace) -> bool:
    """Train the controller's proposals on Ray Tune; False when Ctrl-C stopped it (the way to
    continue printed)."""
    try:
        ray_runner.run_search(
            controller, storage_path=exp, cpus_per_trial=runtime["cpus_per_trial"],
            gpus_per_trial=runtime["gpus_per_trial"], concurrency=concurrency,
            max_failures=runtime["max_failures"], time_budget_s=config.time_budget_s,
            verbose=runtime["verbose"],
        )
    except KeyboardInterrupt:
        _print_resume_hint(config, args)
        return False
    return True


def _print_resume_hint(config: ExperimentConfig, args: argparse.Namespace) -> None:
    print(f"interrupted; continue with: python -m nas.search --out {args.out} "
          f"--name {config.name} --resume", file=sys.stderr)


def _estimate(config: ExperimentConfig, exp: Path, controller: Any,
              objectives: tuple[Objective, ...], runtime: dict[str, Any], concurrency: int,
              args: argparse.Namespace) -> int:
    """The supernet estimator's phases: the supernet (trained on a Ray Train worker unless
    --supernet names one; a resumed search continues it), the proposals scored with inherited
    weights on the driver, then --finetune K trained per candidate on Ray Tune."""
    directory = supernet_estimator.supernet_dir(config, exp)
    moved = supernet_estimator.split_reruns(controller)
    if not config.supernet.get("dir"):
        job = supernet_estimator.supernet_job(config)
        manifest = resume_check(directory, job)
        if manifest is None or not manifest.complete:
            shrink = "" if job.train.shrink == "off" else (
                f" (progressive shrinking: {job.train.shrink})")
            print(f"training the supernet: {job.train.epochs} epochs{shrink} on a Ray Train "
                  f"worker -> {directory}", flush=True)
            directory.mkdir(parents=True, exist_ok=True)
            train_supernet(job, directory, workers=1, use_gpu=runtime["gpus_per_trial"] > 0,
                           cpus_per_worker=max(1.0, runtime["cpus_per_trial"]),
                           address=runtime["address"], max_failures=runtime["max_failures"],
                           verbose=runtime["verbose"])
            last = read_manifest(directory).curve[-1]
            print(f"supernet trained: val (BN recalibrated) largest "
                  f"{last['val_top1_largest']:.1%}, smallest {last['val_top1_smallest']:.1%}",
                  flush=True)
    print(f"scoring proposals with the supernet's inherited weights ({directory})", flush=True)
    scorer = supernet_estimator.SupernetScorer(directory)
    controller.started = time.monotonic()  # --time-budget bounds the scoring, not the supernet
    try:
        supernet_estimator.run_estimated(controller, scorer)
    except KeyboardInterrupt:
        _print_resume_hint(config, args)
        return 130
    if controller.failure:
        raise SearchStopped(controller.failure)
    if not config.finetune:
        print_front(controller, objectives)
        return 0
    print_front(controller, objectives, "supernet")
    if supernet_estimator.prepare_finetune(controller, config, exp, moved):
        print(f"fine-tuning the estimated front's best {config.finetune} "
              f"({config.finetune_from}), {config.epochs} epochs each", flush=True)
        if not _run_on_tune(controller, config, exp, runtime, concurrency, args):
            return 130
        controller.close_live("stopped at the end of the fine-tuning")
        if controller.failure:
            raise SearchStopped(controller.failure)
    print_front(controller, objectives, "train")
    return 0


def create_experiment(config: ExperimentConfig, exp: Path, objectives: tuple[Objective, ...],
                      held: ExitStack, verbose: bool = False) -> tuple[Any, Any]:
    """Make OUT/NAME, lock it, create the study and write experiment.json; the storage and the
    study. Until experiment.json is written, a failure removes what this made, so the same
    command can run again."""
    try:
        exp.mkdir(parents=True)
    except FileExistsError:  # another driver made it since prepare_directory looked
        raise UserError(f"experiment {exp} was just created by another driver; pass --resume "
                        "once it has started, or choose another --name") from None
    try:
        _note(held.enter_context(driver_lock(exp)))
        storage = check_storage(config, exp, False)
        study = open_study(config, exp, objectives, False, storage, verbose)
        atomic_write_text(ExperimentDir(exp).config, config.to_json())
    except BaseException:
        shutil.rmtree(exp, ignore_errors=True)
        raise
    held.callback(close_storage, storage)
    return storage, study


def _note(text: str) -> None:
    if text:
        print(f"note: {text}", file=sys.stderr)


def given_flags(argv: Sequence[str]) -> set[str]:
    """The destinations of the flags `argv` gives explicitly (defaults left out)."""
    parser, unset = build_parser(), object()
    # argparse fills in a default only where the namespace has no value yet.
    given = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(
        vars(parser.parse_args([])), unset)))
    return {dest for dest, value in vars(given).items() if value is not unset}


# Settings a resumed search keeps: the flag, its argparse destination, the setting it decides
# and a destination that decides it instead when given (--epochs beats --smoke's epochs).
Setting = Callable[[ExperimentConfig], Any]
FIXED_ON_RESUME: tuple[tuple[str, str, Setting, str], ...] = (
    ("--space", "space", lambda c: f"preset {c.preset}", ""),
    ("--preset", "preset", lambda c: f"preset {c.preset}", ""),
    ("--data", "data", lambda c: c.data, ""),
    ("--image-size", "image_size", lambda c: c.image_size, ""),
    ("--train-fraction", "train_fraction", lambda c: c.train_fraction, ""),
    ("--objectives", "objectives", lambda c: ",".join(c.objectives), ""),
    ("--epochs", "epochs", lambda c: c.epochs, ""),
    ("--sampler", "sampler", lambda c: c.sampler, ""),
    ("--pruner", "pruner", lambda c: c.pruner, ""),
    ("--seed", "seed", lambda c: c.seed, ""),
    ("--storage", "storage", lambda c: c.storage or "(the journal file)", ""),
    ("--max-macs", "max_macs", lambda c: c.constraints.get("max_macs"), ""),
    ("--max-params", "max_params", lambda c: c.constraints.get("max_params"), ""),
    ("--max-latency-ms", "max_latency_ms", lambda c: c.constraints.get("max_latency_ms"), ""),
    ("--latency-backend", "latency_backend", lambda c: c.latency.get("backend"), ""),
    ("--latency-batch-size", "latency_batch_size", lambda c: c.latency.get("batch_size"), ""),
    ("--latency-threads", "latency_threads", lambda c: c.latency.get("threads"), ""),
    ("--latency-precision", "latency_precision", lambda c: c.latency.get("precision"), ""),
    ("--latency-table", "latency_table", lambda c: c.latency.get("table") or "(none)", ""),
    ("--seed-points", "seed_points", lambda c: ",".join(c.seed_points) or "(none)", ""),
    ("--anchor", "anchor", lambda c: c.anchor, ""),
    ("--batch-size", "batch_size", lambda c: c.train.get("batch_size"), ""),
    ("--lr", "lr", lambda c: c.train.get("lr"), ""),
    ("--estimator", "estimator", lambda c: c.estimator, ""),
    ("--supernet", "supernet", lambda c: c.supernet.get("dir") or "(its own)", ""),
    ("--supernet-epochs", "supernet_epochs",
     lambda c: c.supernet.get("train", {}).get("epochs"), ""),
    ("--supernet-shrink", "supernet_shrink",
     lambda c: c.supernet.get("train", {}).get("shrink", "off"), ""),
    ("--finetune-from", "finetune_from", lambda c: c.finetune_from, ""),
    ("--smoke", "smoke", lambda c: f"epochs {c.epochs}", "epochs"),
    ("--smoke", "smoke", lambda c: f"image size {c.image_size}", "image_size"),
)


def check_resume_flags(exp: Path, stored: ExperimentConfig, fresh: ExperimentConfig,
                       given: set[str]) -> None:
    """Refuse flags given on --resume that would change what the experiment searches (its
    budgets, --trials and --time-budget, may change), naming the stored values."""
    differ = []
    for flag, dest, setting, overridden_by in FIXED_ON_RESUME:
        if dest not in given or overridden_by in given:
            continue
        if setting(fresh) != setting(stored):
            differ.append(f"{flag} gives {setting(fresh)}, the experiment has {setting(stored)}")
    if differ:
        raise UserError(f"cannot resume {exp} with other settings ({'; '.join(differ)}); only "
                        "--trials and --time-budget may change on resume")


def check_storage(config: ExperimentConfig, exp: Path, resume: bool) -> Any:
    """Open the study's storage before anything is written or Ray starts: an unreadable file or
    database, or a new search whose study name is taken, stops here with one line."""
    storage = open_storage(exp, config.storage, create=not resume, search=True)
    names = optuna.get_all_study_names(storage)
    if not resume and config.name in names:
        raise UserError(f"study {config.name!r} already exists in "
                        f"{study_location(exp, config.storage)}; pass --resume")
    if resume and config.name not in names:  # a resume never starts the study over
        raise UserError(f"{study_location(exp, config.storage)} holds no study named "
                        f"{config.name!r} (this experiment's); restore the experiment's study")
    return storage


def open_study(config: ExperimentConfig, exp: Path, objectives: tuple[Objective, ...],
               resume: bool, storage: Any = None, verbose: bool = False) -> Any:
    """The experiment's study with its seeded sampler and pruner (storage checked if not given),
    labelled for optuna-dashboard. Optuna's INFO lines (one per trial) only with `verbose`."""
    storage = storage if storage is not None else check_storage(config, exp, resume)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    # A resumed search must not replay the seeded sampler's first proposals: offset the seed.
    existing = next((s.n_trials for s in optuna.get_all_study_summaries(
        storage, include_best_trial=False) if s.study_name == config.name), 0) if resume else 0
    sampler = make_sampler(config.sampler, seed=config.seed + existing, n_trials=config.trials)
    pruner = make_pruner(config.pruner, objectives, epochs=config.epochs)
    if resume:  # loading writes nothing (create_study(load_if_exists) appends to a journal)
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    else:
        study = optuna.create_study(storage=storage, study_name=config.name, sampler=sampler,
                                    pruner=pruner, directions=[o.direction for o in objectives])
    label_study(study, config, objectives)
    return study


def label_study(study: Any, config: ExperimentConfig, objectives: tuple[Objective, ...]) -> None:
    """What optuna-dashboard shows of the search: the objectives' names, and every setting the
    experiment's config stores as a study attribute (each written only when it changed)."""
    names = [o.name for o in objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    for key, value in json.loads(config.to_json()).items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def make_controller(config: ExperimentConfig, exp: Path, study: Any, space: ResNeStSpace,
                    objectives: tuple[Objective, ...], costs: Any, resume: bool) -> Any:
    records = read_records(exp) if resume else []
    seeds = [adapt_to_task(named_point(n), config, space.preset.input_regime)
             for n in config.seed_points]
    if any(o.name != "accuracy" for o in objectives):
        seeds.extend(anchor_specs(space, config))

    train = TrainConfig(**{**config.train, "epochs": config.epochs, "seed": config.seed})
    latency = worker_latency(config)
    max_latency = config.constraints.get("max_latency_ms") if latency else None

    def trial_config(trial_id: str, spec: ArchSpec, spec_costs: dict[str, float],
                     resume_from: str | None) -> dict[str, Any]:
        """The trial's whole config, decided here: the worker neither parses, adapts nor costs."""
        return TrialConfig(
            spec=spec, data=config.data, image_size=config.image_size, train=train,
            train_fraction=config.train_fraction, costs=spec_costs, resume_from=resume_from,
            trial_dir=str(ExperimentDir(exp).trial(trial_id).path.resolve()),
            latency=latency, max_latency_ms=max_latency,
        ).to_dict()

    return SearchController(config, exp, study, space, objectives, costs, trial_config,
                            seed_specs=seeds, records=records)


def read_records(exp: Path) -> list[TrialRecord]:
    """trials.csv's records for a resume; a damaged file is refused with what to do about it."""
    try:
        return read_trials_csv(exp)
    except UserError as err:
        raise UserError(f"{err}; move the file away and --resume rebuilds it from the study, or "
                        "repair that line") from None


def print_front(controller: Any, objectives: tuple[Objective, ...],
                estimator: str | None = None) -> None:
    """The front (with `estimator`, of the trials scored that way: a supernet search's estimated
    front, or the front of its fine-tuned trials)."""
    front = controller.front(estimator)
    which = {None: "Pareto front", "supernet": "Estimated Pareto front (supernet, inherited "
             "weights)", "train": "Pareto front of the fine-tuned trials"}[estimator]
    print(f"\n{which} ({len(front)} of {len(controller.records)} trials; "
          f"{controller.status_line()}):")
    print(f"{'trial':<7} {'tag':<40} {'accuracy':>9} {'MMACs':>9} {'params':>9} {'epochs':>6}")
    for r in front:
        print(f"{r.trial_id:<7} {r.spec.tag:<40} {r.accuracy:>9.2%} "
              f"{r.costs.get('macs', 0) / 1e6:>9.2f} {r.costs.get('params', 0) / 1e6:>8.3f}M "
              f"{r.epochs:>6}")
    print(f"\ninspect: python -m analysis.pareto {controller.exp}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv, {SearchStopped: (1, "")})


if __name__ == "__main__":
    sys.exit(main())

"""Training a supernet epoch by epoch, with a checkpoint directory that resumes it (no Ray here).

A `SupernetJob` is everything one training decides: what the supernet is for (space, preset,
data, image size, train fraction: `SupernetTarget`), its `SupernetConfig` and the training
settings (`SupernetTrainConfig`). `train_loop` runs it on one process, or on one rank of several
(Ray Train's data parallelism in `trials.ray_runner.run_data_parallel`): every rank draws the
same shuffled, augmented global batch and the same sub-networks from the epoch's seed and trains
on its own slice of the batch, and the gradients are averaged over ranks before each optimizer
step (`torch.distributed`, which Ray Train sets up). BatchNorm normalises by each rank's slice.

Each step is `nas.supernet.training.sandwich_step` (largest, smallest and `n_random` random
sub-networks, in-place distillation from the largest), with the per-candidate trainer's
conventions (`trials.training`): SGD with Nesterov momentum, weight decay on conv and linear
weights only, a linear warm-up then cosine schedule per step, the dataset's own augmentation, and
randomness only from the seed and the epoch number (the epoch's data generator, sub-network draws
and torch's global RNG are seeded at the epoch's start), so `2 epochs + resume 1` equals
`3 epochs` exactly on CPU. With progressive shrinking (`shrink`, `nas.supernet.shrink`) the
smallest and random sub-networks come from the part of the space open at that step, a function
of the step's index in the whole training (a resumed run opens the space as an uninterrupted one
does; `train_loss_smallest` is then the open part's smallest). After each epoch the largest and
the whole space's smallest sub-networks are scored on validation with BN statistics
recalibrated on training batches (`inherited_accuracy`).

The checkpoint directory (`SupernetDir`): `supernet.json`, the manifest (format, the job, the
finished epoch, its curve and the name of the state file), and `supernet-epochNNNN.pt` (supernet
weights, optimizer, schedule, RNG states, epoch). Each epoch writes the new state file
atomically, then the manifest atomically (the commit point), then removes the older state file:
a kill at any moment leaves a manifest naming a whole state file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.supernet.config import SupernetConfig
from nas.supernet.shrink import phase_of, schedule
from nas.supernet.supernet import Supernet
from nas.supernet.training import recalibrate_bn, sandwich_step
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from search_spaces.spec import ArchSpec
from trials.bundle import DataBundle
from trials.data import load_data
from trials.training import (
    epoch_seed,
    param_groups,
    save_checkpoint,
    to_cpu,
    warmup_cosine_scheduler,
)

FORMAT = "resnest-nas/supernet/1"
CALIBRATION_SEED = 12_345  # the training batches BN statistics are recalibrated on


@dataclass(frozen=True)
class SupernetTrainConfig:
    """Training settings of a supernet (defaults: the CLI's)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    n_random: int = 2
    distill: bool = True
    seed: int = 0
    max_batches: int = 0  # steps per epoch at most (0: the whole train split)
    calib_batches: int = 16  # training batches each evaluated sub-network's BN is estimated on
    eval_batch_size: int = 512
    shrink: str = "off"  # progressive shrinking's schedule (nas.supernet.shrink.SCHEDULES)

    def __post_init__(self) -> None:
        schedule(self.shrink)
        for name in ("epochs", "batch_size", "eval_batch_size", "calib_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_random", "max_batches", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name} must be an integer >= 0, got {value!r}")
        if self.batch_size < 2:
            raise UserError(f"batch_size must be >= 2 (batch norm needs two images), got "
                            f"{self.batch_size}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise UserError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class SupernetTarget:
    """What a supernet is trained for; a search may reuse it only when all of this matches."""

    space: str
    preset: str
    data: str
    image_size: int
    train_fraction: float
    val_fraction: float = 0.1

    def differences(self, other: SupernetTarget) -> list[str]:
        """`field VALUE (supernet: VALUE)` for each field where `other` (the wanted) differs."""
        return [f"{f.name} {getattr(other, f.name)!r} (the supernet's: {getattr(self, f.name)!r})"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True)
class SupernetJob:
    """One supernet training: its target, the supernet and the training settings."""

    target: SupernetTarget
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    train: SupernetTrainConfig = field(default_factory=SupernetTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"target": asdict(self.target), "supernet": config_to_dict(self.supernet),
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetJob:
        try:
            return cls(SupernetTarget(**data["target"]), config_from_dict(data["supernet"]),
                       SupernetTrainConfig(**data["train"]))
        except (KeyError, TypeError) as err:
            raise UserError(f"not a supernet job ({type(err).__name__}: {err})") from None


def config_to_dict(config: SupernetConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))  # tuples as lists: what JSON gives back


def config_from_dict(data: Mapping[str, Any]) -> SupernetConfig:
    def tuples(value: Any) -> Any:
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    return SupernetConfig(**{k: tuples(v) for k, v in data.items()})


@dataclass(frozen=True)
class SupernetDir:
    """The files of a supernet checkpoint directory (nothing is created by naming them)."""

    path: Path

    @property
    def manifest(self) -> Path:
        return self.path / "supernet.json"

    def state(self, epoch: int) -> Path:
        return self.path / f"supernet-epoch{epoch:04d}.pt"

    @property
    def ray(self) -> Path:
        """Ray Train's own run folder (its results; the checkpoints are ours)."""
        return self.path / "ray"


@dataclass(frozen=True)
class Manifest:
    """A checkpoint directory's manifest: the job, the last finished epoch and its curve."""

    job: SupernetJob
    epoch: int
    state_file: str
    curve: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.epoch >= self.job.train.epochs

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "job": self.job.to_dict(), "epoch": self.epoch,
                           "state_file": self.state_file, "curve": list(self.curve),
                           "complete": self.complete, "seconds": round(self.seconds, 3)},
                          indent=2, sort_keys=True) + "\n"


def is_supernet_dir(path: Path) -> bool:
    return SupernetDir(Path(path)).manifest.is_file()


def read_manifest(path: str | Path, what: str = "supernet") -> Manifest:
    """The manifest of checkpoint directory `path`; one UserError line naming `what` (e.g.
    `--supernet DIR`) when it is not a supernet checkpoint directory."""
    files = SupernetDir(Path(path))
    if not files.path.is_dir():
        raise UserError(f"{what} {path} is not a directory")
    if not files.manifest.is_file():
        raise UserError(f"{what} {path} is not a supernet checkpoint (no "
                        f"{files.manifest.name}; train one with python -m nas.supernet.train)")
    try:
        data = json.loads(files.manifest.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        manifest = Manifest(SupernetJob.from_dict(data["job"]), int(data["epoch"]),
                            str(data["state_file"]), tuple(data.get("curve", ())),
                            float(data.get("seconds", 0.0)))
    except (OSError, ValueError, KeyError, TypeError, UserError) as err:
        raise UserError(f"{what} {path}: {files.manifest.name} is not a supernet manifest "
                        f"({' '.join(str(err).split())})") from None
    if not (files.path / manifest.state_file).is_file():
        raise UserError(f"{what} {path}: its manifest names {manifest.state_file}, which is "
                        "missing")
    return manifest


def load_state(path: str | Path, manifest: Manifest) -> dict[str, Any]:
    """The state file a manifest names, read without executing pickles."""
    file = Path(path) / manifest.state_file
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise UserError(f"{file} is not a readable supernet state: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{file} is not a {FORMAT} state file")
    return state


def load_supernet(path: str | Path, device: str | torch.device = "cpu",
                  what: str = "supernet") -> tuple[Supernet, Manifest]:
    """The trained supernet of checkpoint directory `path` (its last finished epoch)."""
    manifest = read_manifest(path, what)
    state = load_state(path, manifest)
    supernet = Supernet(manifest.job.supernet, seed=manifest.job.train.seed)
    supernet.load_state_dict(state["supernet"])
    return supernet.to(device), manifest


def job_data(job: SupernetJob, include_test: bool = False) -> DataBundle:
    """The job's data: its train fraction of the train split, validation and (optionally) test."""
    target = job.target
    data = load_data(target.data, target.image_size, include_test=include_test,
                     val_fraction=target.val_fraction).subset(target.train_fraction)
    mismatch = [f"{k} {getattr(data, k)} (supernet {getattr(job.supernet, k)})"
                for k in ("num_classes", "in_channels")
                if getattr(data, k) != getattr(job.supernet, k)]
    if mismatch:
        raise UserError(f"data {target.data} does not fit the supernet: {', '.join(mismatch)}")
    return data


def calibration_batches(data: DataBundle, batch_size: int, count: int,
                        device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The training batches (augmented as in training, from a fixed generator) on which every
    evaluated sub-network's BN statistics are recalibrated: the same for every sub-network."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    out = []
    for x, _ in data.batches("train", batch_size, train=True, generator=generator,
                             device=device):
        out.append(x)
        if len(out) >= count:
            break
    return out


@torch.no_grad()
def inherited_accuracy(supernet: Supernet, spec: ArchSpec, calibration: list[torch.Tensor],
                       data: DataBundle, batch_size: int = 512, split: str = "val",
                       device: torch.device | str = "cpu") -> float:
    """Top-1 of sub-network `spec` on `split` with inherited weights, after recalibrating its BN
    statistics on `calibration` (leaves the supernet in eval mode holding `spec`'s statistics)."""
    recalibrate_bn(supernet, spec, calibration)
    correct, seen = 0, 0
    for x, y in data.batches(split, batch_size, device=device):
        correct += int((supernet(x, spec).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(seen, 1)


class _AveragingOptimizer:
    """An optimizer whose step first averages every gradient over the ranks of the default
    `torch.distributed` process group (data parallelism without DDP: each step trains several
    sub-networks, each leaving other parameters without gradients)."""

    def __init__(self, optimizer: torch.optim.Optimizer, world_size: int) -> None:
        self.optimizer, self.world_size = optimizer, world_size

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:  # the same on every rank: all draw the same sub-networks
                    continue
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world_size)
        self.optimizer.step()


class SupernetTrainer:
    """Trains a job's supernet; `epoch` counts finished epochs and `curve` their records."""

    def __init__(self, job: SupernetJob, data: DataBundle, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1) -> None:
        self.job, self.data, self.device = job, data, torch.device(device)
        self.rank, self.world_size = rank, world_size
        cfg = job.train
        if cfg.batch_size < 2 * world_size:
            raise UserError(f"batch size {cfg.batch_size} is too small for {world_size} workers "
                            "(each needs >= 2 images per step)")
        self.data = data.to(self.device) if data.in_memory else data
        self.supernet = Supernet(job.supernet, seed=cfg.seed).to(self.device)
        self.optimizer = torch.optim.SGD(param_groups(self.supernet, cfg.weight_decay),
                                         lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.momentum > 0)
        self.steps_per_epoch = data.steps_per_epoch(min(cfg.batch_size, len(data.train)))
        if cfg.max_batches:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_batches)
        self.scheduler = warmup_cosine_scheduler(self.optimizer, self.steps_per_epoch,
                                                 cfg.epochs, cfg.warmup_epochs)
        self.generator = torch.Generator()
        self.epoch = 0
        self.curve: list[dict[str, Any]] = []
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return self.epoch >= self.job.train.epochs

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.data.batches("train", self.job.train.batch_size, train=True,
                                    generator=self.generator, device=self.device)
        for step, (x, y) in enumerate(batches):
            if step >= self.steps_per_epoch:
                return
            if self.world_size > 1:  # this rank's slice of the global batch
                x, y = x[self.rank::self.world_size], y[self.rank::self.world_size]
            yield x, y

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch of sandwich steps, score the largest and smallest sub-networks on
        validation (rank 0 only), append and return the epoch's record."""
        cfg, epoch = self.job.train, self.epoch + 1
        start = time.perf_counter()
        seed = epoch_seed(cfg.seed, epoch)
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        optimizer: Any = self.optimizer
        if self.world_size > 1:
            optimizer = _AveragingOptimizer(self.optimizer, self.world_size)
        regions = schedule(cfg.shrink)
        total = cfg.epochs * self.steps_per_epoch
        largest, smallest, steps = 0.0, 0.0, 0
        region = None  # the whole space, drawn as without shrinking
        for x, y in self._batches():
            if len(regions) > 1:
                step = (epoch - 1) * self.steps_per_epoch + steps
                region = regions[phase_of(step, total, len(regions))]
            result = sandwich_step(self.supernet, (x, y), optimizer, rng, cfg.n_random,
                                   cfg.distill, region)
            self.scheduler.step()
            largest += result.losses[0]
            smallest += result.losses[1]
            steps += 1
            if not math.isfinite(result.losses[0]):
                raise UserError(f"non-finite training loss in supernet epoch {epoch} at step "
                                f"{steps}; try a lower --lr (now {cfg.lr:g})")
        record: dict[str, Any] = {"epoch": epoch, "steps": steps,
                                  "train_loss_largest": largest / max(steps, 1),
                                  "train_loss_smallest": smallest / max(steps, 1),
                                  "lr": self.optimizer.param_groups[0]["lr"]}
        if region is not None:
            record["shrink_phase"] = region.label  # the open part at the epoch's last step
        if self.rank == 0:
            calibration = calibration_batches(self.data, cfg.batch_size, cfg.calib_batches,
                                              self.device)
            for name, spec in (("largest", self.supernet.largest()),
                               ("smallest", self.supernet.smallest())):
                record[f"val_top1_{name}"] = inherited_accuracy(
                    self.supernet, spec, calibration, self.data, cfg.eval_batch_size,
                    device=self.device)
        record["epoch_seconds"] = time.perf_counter() - start
        self.seconds += record["epoch_seconds"]
        self.epoch = epoch
        self.curve.append(record)
        return record

    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs, tensors on CPU."""
        return {
            "format": FORMAT,
            "supernet": {k: v.detach().cpu() for k, v in self.supernet.state_dict().items()},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "epoch": self.epoch,
            "job": json.dumps(self.job.to_dict(), sort_keys=True),
        }

    def load_state_dict(self, state: Mapping[str, Any], manifest: Manifest) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch = int(state["epoch"])
        self.curve = [dict(r) for r in manifest.curve]
        self.seconds = manifest.seconds

    def save(self, path: Path) -> None:
        """The epoch's state file, then the manifest naming it, then the older state file goes."""
        files = SupernetDir(path)
        old = read_manifest(path).state_file if files.manifest.is_file() else None
        state_file = save_checkpoint(self.state_dict(), files.state(self.epoch))
        manifest = Manifest(self.job, self.epoch, state_file.name, tuple(self.curve),
                            self.seconds)
        atomic_write_text(files.manifest, manifest.to_json())
        if old and old != state_file.name:
            (files.path / old).unlink(missing_ok=True)


def resume_check(path: Path, job: SupernetJob) -> Manifest | None:
    """The manifest to continue from in `path` (None: nothing there yet); a manifest of another
    job is refused, naming each setting that differs."""
    if not is_supernet_dir(path):
        return None
    manifest = read_manifest(path)
    stored, wanted = manifest.job.to_dict(), job.to_dict()
    differ = [f"{part}.{k} {wanted[part][k]!r} (the checkpoint's: {stored[part].get(k)!r})"
              for part in ("target", "supernet", "train") for k in wanted[part]
              if stored[part].get(k) != wanted[part][k]]
    if differ:
        raise UserError(f"{path} holds a supernet trained with other settings: "
                        f"{'; '.join(differ)}")
    return manifest


def train_loop(args: Mapping[str, Any], rank: int = 0, world_size: int = 1,
               device: str = "cpu", report: Callable[[dict[str, Any]], None] | None = None
               ) -> None:
    """Train `args["job"]` (a `SupernetJob` dict) into the checkpoint directory `args["out"]`,
    continuing from what it holds, until `args["stop_after"]` epochs (default: the job's). Run
    in-process (rank 0 of 1) or on every rank of a data-parallel group (the directory must be
    reachable by every rank; rank 0 writes it). `report` gets each epoch's record."""
    job = SupernetJob.from_dict(args["job"])
    out = Path(args["out"])
    threads = args.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    trainer = SupernetTrainer(job, job_data(job), device, rank, world_size)
    manifest = resume_check(out, job)
    if manifest is not None:
        trainer.load_state_dict(load_state(out, manifest), manifest)
    stop = min(int(args.get("stop_after") or job.train.epochs), job.train.epochs)
    while trainer.epoch < stop:
        record = trainer.train_epoch()
        if rank == 0:
            trainer.save(out)
        if report is not None:
            report(record)


__all__ = ["FORMAT", "Manifest", "SupernetDir", "SupernetJob", "SupernetTarget",
           "SupernetTrainConfig", "SupernetTrainer", "calibration_batches", "config_from_dict",
           "config_to_dict", "inherited_accuracy", "is_supernet_dir", "job_data", "load_state",
           "load_supernet", "read_manifest", "resume_check", "train_loop"]

"""One trial, framework-free: a `TrialConfig` -> data, model, optimizer (built once) -> epochs.

Ray Tune (`trials.ray_runner`) and the standalone CLI (`trials.train`) both run this class, so the
numbers a search reports are the numbers a user reproduces. The config arrives fully decided
(spec adapted, costs known): a trial only loads its data, builds its model and trains.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from nas.models.builder import build_model
from search_spaces import ArchSpec
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from trials.data import DataBundle, load_data
from trials.run_dir import RunDir
from trials.training import Trainer, TrainingFailed, load_checkpoint, save_checkpoint
from trials.trial_config import TrialConfig

# What a trial reports per epoch to a search (the learning curve a TrialRecord keeps).
EPOCH_KEYS = ("epoch", "train_loss", "val_top1", "val_top5", "epoch_seconds", "images_per_s", "lr")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=2)
def _cached_data(data: str, image_size: int, include_test: bool, val_fraction: float,
                 in_memory: bool | None, workers: int) -> DataBundle:
    """Reused actors run many trials in one process: load each dataset once per process."""
    return load_data(data, image_size, include_test=include_test, val_fraction=val_fraction,
                     in_memory=in_memory, workers=workers)


class Trial:
    """A trial set up once: `run()` trains the remaining epochs and yields each epoch's record."""

    def __init__(self, config: TrialConfig, *,
                 checkpoint: Mapping[str, Any] | str | Path | None = None,
                 device: str | torch.device | None = None, threads: int | None = None,
                 include_test: bool = False) -> None:
        self.config, self.spec, self.train_config = config, config.spec, config.train
        self.costs = dict(config.costs)
        self.device = resolve_device(str(device or config.device))
        if threads:
            torch.set_num_threads(int(threads))
        workers = config.workers if config.workers is not None else (threads or _cpu_count())
        self.data = _cached_data(config.data, config.image_size, include_test,
                                 float(config.val_fraction), config.in_memory,
                                 int(workers)).subset(float(config.train_fraction))
        mismatch = [f"{k}={getattr(self.spec, k)} (data {getattr(self.data, k)})"
                    for k in ("num_classes", "in_channels")
                    if getattr(self.spec, k) != getattr(self.data, k)]
        if mismatch:  # e.g. another dataset at the same path on the worker's machine
            raise UserError(f"spec {self.spec.tag} does not fit data {self.data.name}: "
                            + ", ".join(mismatch))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.train_config.seed)
            model = build_model(self.spec)
        self.trainer = Trainer(model, self.data, self.train_config, self.device,
                               workers=int(workers))
        if checkpoint is None and config.resume_from:
            checkpoint = config.resume_from
        if checkpoint is not None:
            self.load_state_dict(checkpoint if isinstance(checkpoint, Mapping)
                                 else load_checkpoint(checkpoint))

    @property
    def epochs(self) -> int:
        return self.train_config.epochs

    @property
    def done(self) -> bool:
        return self.trainer.epoch >= self.epochs

    def run(self) -> Iterator[dict[str, Any]]:
        """Train the remaining epochs, writing the run directory (if any) after each; yield each
        epoch's record. A non-finite loss raises `TrainingFailed`."""
        while not self.done:
            record = self.trainer.train_epoch()
            if self.config.trial_dir:
                self.write_run_dir(self.config.trial_dir)
            yield record

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.trainer.state_dict(), "epochs": self.epochs, "spec": self.spec.to_dict(),
            "config": self.config.flat(), "data": self.data.describe(), "costs": dict(self.costs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state`; it must come from the same spec and training settings."""
        if state.get("spec") != self.spec.to_dict():
            other = ArchSpec.from_dict(state["spec"]).tag
            raise UserError(f"checkpoint was trained for another spec ({other}), "
                            f"not {self.spec.tag}")
        saved = state.get("train_config", {})
        differ = sorted(k for k, v in self.train_config.to_dict().items() if saved.get(k) != v)
        if differ:
            raise UserError("checkpoint was trained with different settings: " + ", ".join(
                f"{k}={saved.get(k)!r} (now {getattr(self.train_config, k)!r})" for k in differ))
        self.trainer.load_state_dict(dict(state))

    def save(self, directory: str | Path) -> Path:
        """Write the checkpoint into `directory` (atomically)."""
        return save_checkpoint(self.state_dict(), RunDir(Path(directory)).checkpoint)

    def write_run_dir(self, directory: str | Path) -> None:
        """The run-directory layout (`trials.run_dir.RunDir`) shared by the CLI and search
        trials: the spec, the checkpoint and the metrics (one JSON record per finished epoch)."""
        run = RunDir(Path(directory))
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.spec, self.spec.to_json(indent=2) + "\n")
        self.save(run.path)
        atomic_write_text(run.metrics, "".join(json.dumps(r, sort_keys=True) + "\n"
                                               for r in self.trainer.curve))


__all__ = ["Trial", "TrainingFailed", "TrialConfig", "resolve_device"]

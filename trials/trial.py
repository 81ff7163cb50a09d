"""One trial, framework-free: config dict -> spec, data, model, optimizer (built once) -> epochs.

Ray Tune (`trials.ray_runner`) and the standalone CLI (`trials.train`) both run this class, so the
numbers a search reports are the numbers a user reproduces. Static costs are computed before any
training and merged into every epoch's metrics, so schedulers and pruners can use them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_spaces import ArchSpec, get_space, list_spaces, resolve_spec
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from trials.data import DataBundle, load_data
from trials.training import (
    TrainConfig,
    Trainer,
    TrainingFailed,
    load_checkpoint,
    save_checkpoint,
)

# Every key a trial config may hold, with its default. Keys starting with "_" are ignored (free for
# a search driver's bookkeeping); any other unknown key is an error, so typos never pass silently.
TRIAL_DEFAULTS: dict[str, Any] = {
    "spec": None,  # ArchSpec, spec dict, named point, JSON path/text, or SPACE:SEED (a sample)
    "data": "digits",
    "image_size": None,  # None: the dataset's default (digits 16, CIFAR 32, folder 64)
    "adapt": True,  # retarget num_classes/in_channels to the data (False: a mismatch is an error)
    "val_fraction": 0.1,  # carved from train when the dataset has no validation split
    "train_fraction": 1.0,  # train on a fixed stratified subset (low fidelity, quick tests)
    "in_memory": None,  # folder data: None decides by size
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "workers": None,  # DataLoader workers for streamed folders; None: the trial's CPU threads
    "trial_dir": None,  # also write checkpoint.pt, metrics.jsonl, spec.json here every epoch
    "resume_from": None,  # checkpoint file/dir to continue from when the runner has none
    **{f.name: f.default for f in dataclasses.fields(TrainConfig)},
}
COST_KEYS = ("params", "macs", "peak_memory_bytes", "latency_ms")
_SAMPLE = re.compile(r"^(?P<space>[\w-]+):(?P<seed>\d+)$")


def resolve_arch(value: Any) -> tuple[ArchSpec, bool]:
    """(spec, explicit): explicit specs (JSON file/text/dict/ArchSpec) fix their class count; named
    points and `SPACE:SEED` samples are templates whose classes/channels adapt to the data."""
    if isinstance(value, ArchSpec):
        return value, True
    if isinstance(value, dict):
        return ArchSpec.from_dict(value), True
    if not isinstance(value, (str, Path)) or not str(value):
        raise UserError(f"spec must be a named point, SPACE:SEED, JSON file or spec dict, got {value!r}")
    text = str(value)
    match = _SAMPLE.match(text)
    if match and match["space"] in list_spaces():
        return get_space(match["space"]).sample(np.random.default_rng(int(match["seed"]))), False
    explicit = isinstance(value, Path) or text.endswith(".json") or text.lstrip().startswith("{")
    return resolve_spec(value), explicit


def fit_spec(spec: ArchSpec, data: DataBundle, *, adapt: bool, source: str = "spec") -> ArchSpec:
    """The spec retargeted to the data's classes/channels (if allowed), checked against its size."""
    wrong = {k: getattr(data, k) for k in ("num_classes", "in_channels") if getattr(spec, k) != getattr(data, k)}
    if wrong and not adapt:
        have = ", ".join(f"{k}={getattr(spec, k)}" for k in wrong)
        need = ", ".join(f"{k}={v}" for k, v in wrong.items())
        raise UserError(f"{source} has {have} but data {data.name} needs {need}; "
                        "fix the spec or pass --adapt to retarget it")
    spec = spec.replace(**wrong) if wrong else spec
    if data.image_size < spec.min_image_size:
        raise UserError(
            f"image size {data.image_size} is too small for {source}: its {spec.input_regime} stem and "
            f"{len(spec.stages)} stages need >= {spec.min_image_size} px (raise --image-size)")
    return spec


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in; unknown keys and a missing spec are errors. Training
    keys may also come grouped under "train" (a dict), but not both ways at once."""
    config = dict(config)
    grouped = config.pop("train", None) or {}
    if not isinstance(grouped, Mapping):
        raise UserError(f"trial config 'train' must be a dict of training settings, got {grouped!r}")
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    if bad := sorted(set(grouped) - train_keys):
        raise UserError(f"unknown training key(s) {', '.join(bad)} in 'train'; valid: {', '.join(sorted(train_keys))}")
    if both := sorted(set(grouped) & set(config)):
        raise UserError(f"trial config sets {', '.join(both)} both at the top level and in 'train'")
    config.update(grouped)
    for key in ("data", "trial_dir", "resume_from"):  # checkpoints hold plain types only
        if isinstance(config.get(key), Path):
            config[key] = str(config[key])
    unknown = sorted(k for k in config if k not in TRIAL_DEFAULTS and not str(k).startswith("_"))
    if unknown:
        raise UserError(f"unknown trial config key(s) {', '.join(unknown)}; valid: {', '.join(TRIAL_DEFAULTS)}")
    if config.get("spec") is None:
        raise UserError("trial config needs 'spec' (named point, SPACE:SEED, JSON path or spec dict)")
    return {k: config.get(k, v) for k, v in TRIAL_DEFAULTS.items()}


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
def _cached_data(data: str, image_size: int | None, include_test: bool, val_fraction: float,
                 in_memory: bool | None, workers: int) -> DataBundle:
    """Reused actors run many trials in one process: load each dataset once per process."""
    return load_data(data, image_size, include_test=include_test, val_fraction=val_fraction,
                     in_memory=in_memory, workers=workers)


def static_costs(spec: ArchSpec, image_size: int) -> dict[str, float]:
    """The numeric cost fields of `nas.static_costs` (params, MACs, peak memory; no latency:
    that needs timing runs, which the search does once per spec if an objective uses it)."""
    from nas.models.costs import static_costs as costs_of

    record = costs_of(spec, image_size)
    raw = record.to_dict() if hasattr(record, "to_dict") else dataclasses.asdict(record)
    return {k: raw[k] for k in COST_KEYS if isinstance(raw.get(k), (int, float)) and not isinstance(raw.get(k), bool)}


class Trial:
    """A trial set up once: `run()` trains the remaining epochs and yields metrics per epoch."""

    def __init__(self, config: Mapping[str, Any], *, checkpoint: Mapping[str, Any] | str | Path | None = None,
                 device: str | torch.device | None = None, threads: int | None = None,
                 include_test: bool = False) -> None:
        import nas

        self.config = check_config(config)
        cfg = self.config
        self.train_config = TrainConfig.from_dict(cfg)
        self.device = resolve_device(str(device or cfg["device"]))
        if threads:
            torch.set_num_threads(int(threads))
        workers = cfg["workers"] if cfg["workers"] is not None else (threads or _cpu_count())
        template, explicit = resolve_arch(cfg["spec"])
        self.data = _cached_data(cfg["data"], cfg["image_size"], include_test, float(cfg["val_fraction"]),
                                 cfg["in_memory"], int(workers)).subset(float(cfg["train_fraction"]))
        named = isinstance(cfg["spec"], (str, Path)) and not str(cfg["spec"]).lstrip().startswith("{")
        self.spec = fit_spec(template, self.data, adapt=bool(cfg["adapt"]) or not explicit,
                             source=f"spec {cfg['spec']}" if named else "the spec")
        self.costs = static_costs(self.spec, self.data.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.train_config.seed)
            model = nas.build_model(self.spec)
        self.trainer = Trainer(model, self.data, self.train_config, self.device, workers=int(workers))
        if checkpoint is None and cfg["resume_from"]:
            checkpoint = cfg["resume_from"]
        if checkpoint is not None:
            self.load_state_dict(checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint))

    @property
    def epochs(self) -> int:
        return self.train_config.epochs

    @property
    def done(self) -> bool:
        return self.trainer.epoch >= self.epochs

    def run(self) -> Iterator[dict[str, Any]]:
        """Train the remaining epochs; yield each epoch's record merged with the static costs.
        A non-finite loss raises `TrainingFailed` (see `failure_metrics`)."""
        while not self.done:
            record = self.trainer.train_epoch()
            if self.config["trial_dir"]:
                self.write_run_dir(self.config["trial_dir"])
            yield self.metrics(record)

    def metrics(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {**record, **self.costs, "state": "COMPLETE" if self.done else "RUNNING", "reason": ""}

    def failure_metrics(self, err: TrainingFailed) -> dict[str, Any]:
        """The last report of a failed trial: costs, state FAIL and why in `reason` and `failed`
        (no epoch or accuracy keys, so schedulers never rank it)."""
        return {**self.costs, "state": "FAIL", "reason": err.reason, "failed": err.reason,
                "failed_epoch": err.epoch}

    def state_dict(self) -> dict[str, Any]:
        config = {k: v for k, v in self.config.items() if k != "spec"}
        return {
            **self.trainer.state_dict(), "epochs": self.epochs, "spec": self.spec.to_dict(),
            "config": config, "data": self.data.describe(), "costs": dict(self.costs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state`; it must come from the same spec and training settings."""
        if state.get("spec") != self.spec.to_dict():
            raise UserError(f"checkpoint was trained for another spec ({ArchSpec.from_dict(state['spec']).tag}), "
                            f"not {self.spec.tag}")
        saved = state.get("train_config", {})
        differ = sorted(k for k, v in self.train_config.to_dict().items() if saved.get(k) != v)
        if differ:
            raise UserError("checkpoint was trained with different settings: " + ", ".join(
                f"{k}={saved.get(k)!r} (now {getattr(self.train_config, k)!r})" for k in differ))
        self.trainer.load_state_dict(dict(state))

    def save(self, directory: str | Path) -> Path:
        """Write `directory/checkpoint.pt` (atomically)."""
        return save_checkpoint(self.state_dict(), Path(directory) / "checkpoint.pt")

    def write_run_dir(self, directory: str | Path) -> None:
        """The run-directory layout shared by the CLI and search trials: `spec.json`,
        `checkpoint.pt` and `metrics.jsonl` (one JSON record per finished epoch)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "spec.json", self.spec.to_json(indent=2) + "\n")
        self.save(directory)
        atomic_write_text(directory / "metrics.jsonl",
                    "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.trainer.curve))


__all__ = ["COST_KEYS", "TRIAL_DEFAULTS", "Trial", "TrainingFailed", "check_config", "fit_spec",
           "resolve_arch", "resolve_device", "static_costs"]

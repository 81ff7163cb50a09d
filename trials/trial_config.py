"""`TrialConfig`: everything one trial runs on, decided once by whoever launches it.

The search driver builds one per trial from a spec it has already adapted and costed; the
standalone CLI and `run_tuner` build one from a user-facing config (`build_trial_config`: the one
place that validates `TRIAL_DEFAULTS` keys, resolves a named point, `SPACE:SEED` or JSON spec and
fits it to the data's shape). The worker only runs `TrialConfig.from_dict(...)`: it never
re-parses, re-adapts or re-costs a spec. `to_dict()` is JSON-able (Ray's param_space and
Searcher.suggest need a dict) and `from_dict` inverts it exactly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.models.costs import static_costs
from search_spaces import ArchSpec, get_space, list_spaces, resolve_spec
from search_spaces.errors import UserError
from trials.bundle import DEFAULT_IMAGE_SIZE, DatasetShape
from trials.data import default_train_fraction, describe, parse_data_spec
from trials.run_dir import RunDir
from trials.training import TrainConfig

_TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
_SAMPLE = re.compile(r"^(?P<space>[\w-]+):(?P<seed>\d+)$")


@dataclass(frozen=True)
class TrialConfig:
    """One trial, fully decided: the adapted spec, its static costs, data and training settings."""

    spec: ArchSpec  # already fitted to the data's classes, channels and image size
    data: str
    image_size: int
    train: TrainConfig = TrainConfig()
    costs: dict[str, float] = field(default_factory=dict)  # stored in the checkpoint
    trial_dir: str | None = None  # the run directory written every epoch (`trials.run_dir`)
    resume_from: str | None = None  # checkpoint file/dir to continue from when the runner has none
    val_fraction: float = 0.1
    train_fraction: float = 1.0
    in_memory: bool | None = None
    device: str = "auto"
    workers: int | None = None
    # Latency measured on the worker before training (`trials.latency_step`): the settings
    # (`nas.models.latency.LatencySettings` without device; threads None = the trial's CPUs),
    # the constraint it is checked against and the node-wide lock serialising measurements.
    latency: dict[str, Any] | None = None
    max_latency_ms: float | None = None
    latency_lock: str | None = None

    @property
    def epochs(self) -> int:
        return self.train.epochs

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def run_dir(self) -> RunDir | None:
        return RunDir(Path(self.trial_dir)) if self.trial_dir else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the spec as its dict, the training settings as a dict under "train"."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "spec": self.spec.to_dict(), "train": self.train.to_dict(),
                "costs": dict(self.costs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialConfig:
        """The inverse of `to_dict`; keys starting with "_" (a driver's bookkeeping) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if not str(k).startswith("_")}
        if unknown := sorted(set(values) - names):
            raise UserError(f"unknown TrialConfig key(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(names))}")
        if missing := sorted({"spec", "data", "image_size"} - set(values)):
            raise UserError(f"TrialConfig needs {', '.join(missing)}")
        train = values.get("train", {})
        if not isinstance(train, Mapping) or set(train) - _TRAIN_KEYS:
            raise UserError("TrialConfig 'train' must be a dict of training settings, "
                            f"got {train!r}")
        return cls(**{**values, "spec": ArchSpec.from_dict(values["spec"]),
                      "train": TrainConfig(**train), "costs": dict(values.get("costs", {}))})

    def flat(self) -> dict[str, Any]:
        """The settings in one flat dict, without spec and costs (a checkpoint's "config")."""
        out = self.to_dict()
        del out["spec"], out["costs"]
        train = out.pop("train")
        return {**out, **train}

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], spec: ArchSpec,
                  costs: Mapping[str, float]) -> TrialConfig:
        """The inverse of `flat`, also for checkpoints that kept the user's `image_size` None
        and an `adapt` flag."""
        own = {f.name for f in dataclasses.fields(cls)} - {"spec", "costs", "train"}
        values = {k: v for k, v in flat.items() if k in own}
        if values.get("image_size") is None:
            values["image_size"] = DEFAULT_IMAGE_SIZE[parse_data_spec(values["data"])[0]]
        return cls(spec=spec, costs=dict(costs), train=TrainConfig.from_dict(dict(flat)), **values)


# Every key a user-facing trial config may hold, with its default: the spec and data as the user
# names them, `adapt`, then TrialConfig's own settings and the training settings. Keys starting
# with "_" are ignored (free for a driver's bookkeeping); any other unknown key is an error, so
# typos never pass silently.
TRIAL_DEFAULTS: dict[str, Any] = {
    "spec": None,  # ArchSpec, spec dict, named point, JSON path/text, or SPACE:SEED (a sample)
    "data": "fashion-mnist-subset",  # the shipped subset: the same quick start on every machine
    "image_size": None,  # None: the dataset's default (trials.bundle.DEFAULT_IMAGE_SIZE)
    "adapt": True,  # retarget num_classes/in_channels to the data (False: a mismatch is an error)
    "train_fraction": None,  # None: the dataset's default (trials.bundle.DEFAULT_TRAIN_FRACTION)
    **{f.name: f.default for f in dataclasses.fields(TrialConfig)
       if f.name not in ("spec", "data", "image_size", "train", "costs", "train_fraction",
                         "latency", "max_latency_ms", "latency_lock")},
    **{f.name: f.default for f in dataclasses.fields(TrainConfig)},
}


def resolve_arch(value: Any) -> tuple[ArchSpec, bool]:
    """(spec, explicit): explicit specs (JSON file/text/dict/ArchSpec) fix their class count; named
    points and `SPACE:SEED` samples are templates whose classes/channels adapt to the data."""
    if isinstance(value, ArchSpec):
        return value, True
    if isinstance(value, dict):
        return ArchSpec.from_dict(value), True
    if not isinstance(value, (str, Path)) or not str(value):
        raise UserError("spec must be a named point, SPACE:SEED, JSON file or spec dict, "
                        f"got {value!r}")
    text = str(value)
    match = _SAMPLE.match(text)
    if match and match["space"] in list_spaces():
        rng = np.random.default_rng(int(match["seed"]))
        return get_space(match["space"]).sample(rng), False
    explicit = isinstance(value, Path) or text.endswith(".json") or text.lstrip().startswith("{")
    return resolve_spec(value), explicit


def fit_spec(spec: ArchSpec, data: DatasetShape, *, adapt: bool,
             source: str = "spec") -> ArchSpec:
    """The spec retargeted to the data's classes/channels (if allowed), checked against its size."""
    wrong = {k: getattr(data, k) for k in ("num_classes", "in_channels")
             if getattr(spec, k) != getattr(data, k)}
    if wrong and not adapt:
        have = ", ".join(f"{k}={getattr(spec, k)}" for k in wrong)
        need = ", ".join(f"{k}={v}" for k, v in wrong.items())
        raise UserError(f"{source} has {have} but data {data.name} needs {need}; "
                        "fix the spec or pass --adapt to retarget it")
    spec = spec.replace(**wrong) if wrong else spec
    if data.image_size < spec.min_image_size:
        raise UserError(
            f"image size {data.image_size} is too small for {source}: its {spec.input_regime} "
            f"stem and {len(spec.stages)} stages need >= {spec.min_image_size} px "
            "(raise --image-size)")
    return spec


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in; unknown keys and a missing spec are errors. Training
    keys may also come grouped under "train" (a dict), but not both ways at once."""
    config = dict(config)
    grouped = config.pop("train", None) or {}
    if not isinstance(grouped, Mapping):
        raise UserError("trial config 'train' must be a dict of training settings, "
                        f"got {grouped!r}")
    if bad := sorted(set(grouped) - _TRAIN_KEYS):
        raise UserError(f"unknown training key(s) {', '.join(bad)} in 'train'; "
                        f"valid: {', '.join(sorted(_TRAIN_KEYS))}")
    if both := sorted(set(grouped) & set(config)):
        raise UserError(f"trial config sets {', '.join(both)} both at the top level and in "
                        "'train'")
    config.update(grouped)
    for key in ("data", "trial_dir", "resume_from"):  # checkpoints hold plain types only
        if isinstance(config.get(key), Path):
            config[key] = str(config[key])
    unknown = sorted(k for k in config if k not in TRIAL_DEFAULTS and not str(k).startswith("_"))
    if unknown:
        raise UserError(f"unknown trial config key(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(TRIAL_DEFAULTS)}")
    if config.get("spec") is None:
        raise UserError("trial config needs 'spec' (named point, SPACE:SEED, JSON path or spec "
                        "dict)")
    return {k: config.get(k, v) for k, v in TRIAL_DEFAULTS.items()}


def build_trial_config(config: Mapping[str, Any]) -> TrialConfig:
    """A user-facing trial config (see `TRIAL_DEFAULTS`) decided once: checked, its spec resolved
    and fitted to the data's shape (learnt without loading images), its params and MACs costed."""
    cfg = check_config(config)
    train = TrainConfig.from_dict(cfg)
    template, explicit = resolve_arch(cfg["spec"])
    shape = describe(cfg["data"], cfg["image_size"])
    named = isinstance(cfg["spec"], (str, Path)) and not str(cfg["spec"]).lstrip().startswith("{")
    spec = fit_spec(template, shape, adapt=bool(cfg["adapt"]) or not explicit,
                    source=f"spec {cfg['spec']}" if named else "the spec")
    record = static_costs(spec, shape.image_size)
    return TrialConfig(
        spec=spec, data=cfg["data"], image_size=shape.image_size, train=train,
        costs={"params": record.params, "macs": record.macs}, trial_dir=cfg["trial_dir"],
        resume_from=None if cfg["resume_from"] is None else str(cfg["resume_from"]),
        val_fraction=cfg["val_fraction"],
        train_fraction=default_train_fraction(cfg["data"]) if cfg["train_fraction"] is None
        else cfg["train_fraction"],
        in_memory=cfg["in_memory"], device=str(cfg["device"]), workers=cfg["workers"],
    )


__all__ = ["TRIAL_DEFAULTS", "TrialConfig", "build_trial_config", "check_config", "fit_spec",
           "resolve_arch"]

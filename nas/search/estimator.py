"""The search's supernet estimator (`python -m nas.search --estimator supernet`, issue 20 item 3).

The search trains one supernet (`nas.supernet.trainer`, on a Ray Train worker) into the
experiment's `supernet/` directory, or reuses a trained one (`--supernet DIR`, which must have been
trained for the search's space, preset, data, image size and train fraction), then the Optuna
sampler proposes architectures of the space the supernet covers (the `small` preset with the
supernet's fixed global axes) and each is scored on the driver: its BN statistics recalibrated on
the supernet's calibration batches (training batches), then its validation top-1 with the
inherited weights. Costs and constraints are the controller's, as for trained trials; a scored
trial is COMPLETE with one curve entry at epoch 0 and `estimator` `supernet` in trials.csv, and
its run directory holds the inherited weights as a checkpoint (what `nas.export` exports).

`--finetune K` then trains the best K (by estimated accuracy) of the estimated front through the
ordinary per-candidate path (Ray Tune, `trials.ray_runner.run_search`), from the inherited weights
or from scratch, without pruning; the final front is the front of those trained trials.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from nas.experiment import ExperimentConfig, ExperimentDir, TrialRecord
from nas.search.recovery import is_interrupted
from nas.supernet.config import SupernetConfig
from nas.supernet.trainer import (
    Manifest,
    SupernetJob,
    SupernetTarget,
    SupernetTrainConfig,
    calibration_batches,
    inherited_accuracy,
    job_data,
    load_supernet,
    read_manifest,
)
from search_spaces.cli import one_line
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from search_spaces.registry import get_space
from search_spaces.resnest_space import ResNeStSpace
from search_spaces.spec import ArchSpec
from trials.run_dir import RunDir
from trials.trial import Trial, TrialConfig

SUPERNET_EPOCHS = 8  # a supernet the search trains itself (--supernet-epochs)
# --smoke's supernet: a few batches per epoch, as python -m nas.supernet.train --smoke.
SMOKE_SUPERNET = {"epochs": 2, "batch_size": 16, "max_batches": 3, "calib_batches": 2}
SUPPORTED_PRESET = "small"


def target_of(config: ExperimentConfig) -> SupernetTarget:
    """What the search needs its supernet to have been trained for."""
    return SupernetTarget(space=config.space, preset=config.preset, data=config.data,
                          image_size=config.image_size, train_fraction=config.train_fraction)


def supernet_job(config: ExperimentConfig) -> SupernetJob:
    """The supernet a search trains itself (num_classes and in_channels known)."""
    space = get_space(config.space, config.preset)
    if space.preset.name != SUPPORTED_PRESET:
        raise UserError(f"--estimator supernet: the supernet covers the {SUPPORTED_PRESET} "
                        f"preset only, not {space.preset.name}")
    supernet = SupernetConfig.from_preset(space.preset, num_classes=config.num_classes,
                                          in_channels=config.in_channels)
    return SupernetJob(target_of(config), supernet,
                       SupernetTrainConfig(**config.supernet.get("train", {})))


def given_manifest(config: ExperimentConfig) -> Manifest:
    """The manifest of `--supernet DIR`, refused (one line naming what differs) unless it was
    trained for this search and holds all its epochs."""
    path = config.supernet["dir"]
    manifest = read_manifest(path, "--supernet")
    job = manifest.job
    differ = job.target.differences(target_of(config))
    differ += [f"{k} {getattr(config, k)} (the supernet's: {getattr(job.supernet, k)})"
               for k in ("num_classes", "in_channels")
               if getattr(config, k) != getattr(job.supernet, k)]
    if differ:
        raise UserError(f"--supernet {path} was trained for another search: "
                        f"{'; '.join(differ)}")
    if not manifest.complete:
        raise UserError(f"--supernet {path} holds {manifest.epoch} of its {job.train.epochs} "
                        f"epochs; finish it first: python -m nas.supernet.train --out {path} "
                        "--resume")
    return manifest


def supernet_config_of(config: ExperimentConfig) -> SupernetConfig:
    if config.supernet.get("dir"):
        return given_manifest(config).job.supernet
    return supernet_job(config).supernet


def supernet_dir(config: ExperimentConfig, exp: Path) -> Path:
    return Path(config.supernet["dir"]) if config.supernet.get("dir") else (
        ExperimentDir(exp).supernet)


def covered_space(supernet: SupernetConfig, name: str) -> ResNeStSpace:
    """The space the sampler proposes from: the architectures of space `name` the supernet
    covers."""
    space = ResNeStSpace(supernet.preset)
    space.name = f"{name} (the supernet's part)"
    return space


def check_covered(specs: dict[str, ArchSpec], supernet: SupernetConfig) -> None:
    """Refuse architectures (seed points) the supernet does not cover, naming what differs."""
    for name, spec in specs.items():
        if problems := supernet.violations(spec):
            raise UserError(f"--seed-points {name} is outside the supernet: "
                            f"{'; '.join(problems)}")


class SupernetScorer:
    """Scores proposals with inherited weights (on the driver's CPU)."""

    def __init__(self, directory: Path) -> None:
        self.supernet, self.manifest = load_supernet(directory)
        train = self.manifest.job.train
        self.data = job_data(self.manifest.job)
        self.calibration = calibration_batches(self.data, train.batch_size, train.calib_batches)
        self.eval_batch_size = train.eval_batch_size

    def score(self, trial_config: dict[str, Any]) -> dict[str, Any]:
        """A trial's result: `epoch` 0 and `val_top1` with inherited weights (its run directory
        gets the spec, the inherited weights as a checkpoint and the one metrics line), or
        `failed` for an architecture outside the supernet."""
        start = time.monotonic()
        config = TrialConfig.from_dict(trial_config)
        try:
            self.supernet.check(config.spec)
        except UserError as err:
            return {"failed": one_line(err), "reason": one_line(err)}
        accuracy = inherited_accuracy(self.supernet, config.spec, self.calibration, self.data,
                                      self.eval_batch_size)
        record = {"epoch": 0, "val_top1": accuracy}
        if config.trial_dir:
            trial = Trial(config, device="cpu")
            trial.trainer.model.load_state_dict(self.supernet.extract(config.spec)[1])
            trial.write_run_dir(config.trial_dir)
            atomic_write_text(RunDir(Path(config.trial_dir)).metrics,
                              json.dumps(record, sort_keys=True) + "\n")
        return {**record, "time_total_s": time.monotonic() - start}


def run_estimated(controller: Any, scorer: SupernetScorer) -> None:
    """Propose, cost, constrain and score until the budget is spent, all on the driver."""
    while True:
        proposal = controller.next_trial()
        if proposal is None:
            return
        trial_id, trial_config = proposal
        try:
            result = scorer.score(trial_config)
        except (UserError, RuntimeError) as err:
            result = {"failed": one_line(err)}
        controller.on_complete(trial_id, result)


def estimated_budget(controller: Any) -> int:
    """Architectures the estimator phase has scored (what `--trials` counts there)."""
    return sum(r.estimator == "supernet" and r.state != "INFEASIBLE" and not is_interrupted(r)
               for r in controller.records.values())


def split_reruns(controller: Any) -> list[tuple[ArchSpec, str | None]]:
    """Take the interrupted fine-tuning trials out of the controller's re-run queue (the
    estimator phase re-scores only its own); they run first in the fine-tuning phase."""
    tuned = {r.spec.spec_hash for r in controller.records.values()
             if r.estimator == "train" and is_interrupted(r)}
    reruns = controller.queue[:controller.reruns]
    keep = [entry for entry in reruns if entry[0].spec_hash not in tuned]
    moved = [entry for entry in reruns if entry[0].spec_hash in tuned]
    controller.queue = keep + controller.queue[controller.reruns:]
    controller.reruns = len(keep)
    return moved


def to_finetune(controller: Any, config: ExperimentConfig) -> list[TrialRecord]:
    """The best `config.finetune` architectures of the estimated front by estimated accuracy
    (an architecture the sampler proposed twice counts once: training it twice buys nothing);
    more than the front holds is refused in one line (the estimated trials stay)."""
    ranked = sorted(controller.front("supernet"), key=lambda r: (-(r.accuracy or 0.0), r.number))
    distinct: dict[str, TrialRecord] = {}
    for r in ranked:
        distinct.setdefault(r.spec.spec_hash, r)
    if config.finetune > len(distinct):
        raise UserError(f"--finetune {config.finetune} is larger than the estimated front "
                        f"({len(distinct)} architecture(s)); nothing was fine-tuned; continue "
                        f"with --resume --finetune {len(distinct)} or less")
    return list(distinct.values())[:config.finetune]


def prepare_finetune(controller: Any, config: ExperimentConfig, exp: Path,
                     moved: list[tuple[ArchSpec, str | None]]) -> bool:
    """Turn the controller to the fine-tuning phase: the chosen trials queued (those not trained
    yet), trained per candidate from their inherited checkpoints (or from scratch), never
    pruned, with a fresh time budget. False when nothing is left to fine-tune."""
    best = to_finetune(controller, config)
    trained = {r.spec.spec_hash for r in controller.records.values()
               if r.estimator == "train" and not is_interrupted(r)}
    waiting = {spec.spec_hash for spec, _ in moved}
    queue = [(r.spec, str(ExperimentDir(exp).trial(r.trial_id).checkpoint)
              if config.finetune_from == "inherited" else None)
             for r in best if r.spec.spec_hash not in trained | waiting]
    if not queue and not moved:
        return False
    controller.estimator = "train"
    controller.queue = [*moved, *queue]
    controller.reruns = len(moved)
    controller.config = replace(config, trials=estimated_budget(controller) + len(best))
    controller.started = time.monotonic()
    controller.stopped = False
    controller.study.pruner = optuna.pruners.NopPruner()
    return True


__all__ = ["SMOKE_SUPERNET", "SUPERNET_EPOCHS", "SupernetScorer", "check_covered",
           "covered_space", "estimated_budget", "given_manifest", "prepare_finetune",
           "run_estimated", "split_reruns", "supernet_config_of", "supernet_dir", "supernet_job",
           "target_of", "to_finetune"]

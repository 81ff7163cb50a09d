"""All Ray code of the project lives here, so a Ray API change touches one file.

Section "trial": `ray_trainable(config)`, the function trainable every search trial runs. It wraps
`trials.trial.Trial` (the same code as `python -m trials.train`), reports one result per epoch
with a checkpoint (Ray 2.60 `ray.tune.report` / `ray.tune.get_checkpoint`) and honours the CPUs and
GPU Ray assigned. `run_tuner` runs it in a plain Tuner (tests, quick experiments).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search_spaces.errors import UserError
from trials.training import TrainingFailed, load_checkpoint
from trials.trial import Trial

# --- trial -------------------------------------------------------------------------------------


def assigned_resources() -> tuple[int, str]:
    """(CPU threads, device) Ray gave this trial: threads = its CPUs (at least 1); CUDA only when
    Ray assigned a GPU (Ray sets CUDA_VISIBLE_DEVICES, so it is always cuda:0 here)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return max(1, int(round(cpus))), device


def ray_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: `config` is a trial config (see `trials.trial.TRIAL_DEFAULTS`)."""
    run_trial(config, report=tune.report, get_checkpoint=tune.get_checkpoint)


def run_trial(config: dict[str, Any], *, report: Callable[..., None],
              get_checkpoint: Callable[[], Any]) -> None:
    """The trainable's body with Ray's session calls passed in (tests wrap `report`).

    Resumes from Ray's checkpoint when it has one (a retried or restored trial), else from
    config["resume_from"]. A non-finite loss or a user error is reported once as state FAIL with
    `failed`/`reason` and the trial returns normally: retrying a deterministic failure is waste.
    """
    threads, device = assigned_resources()
    torch.set_num_threads(threads)
    state = None
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory) / "checkpoint.pt")
    try:
        trial = Trial(config, checkpoint=state, device=device, threads=threads)
    except (UserError, torch.OutOfMemoryError) as err:
        reason = " ".join(str(err).split())
        report({"state": "FAIL", "reason": reason, "failed": reason})
        return
    if trial.done:  # restored after its last epoch: repeat the final result so Tune sees one
        report(trial.metrics(trial.trainer.curve[-1]))
        return
    try:
        for metrics in trial.run():
            metrics.update(threads=threads, device=device)
            with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as directory:
                trial.save(directory)
                report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    except TrainingFailed as err:
        report(trial.failure_metrics(err))
    except (UserError, torch.OutOfMemoryError) as err:  # e.g. an unreadable image met mid-epoch
        reason = " ".join(str(err).split())
        if isinstance(err, torch.OutOfMemoryError):
            reason = f"out of memory: {reason}"
        report({**trial.costs, "state": "FAIL", "reason": reason, "failed": reason})


def run_tuner(param_space: dict[str, Any], *, storage_path: str | Path, name: str = "trials",
              num_samples: int = 1, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
              max_concurrent: int = 0, max_failures: int = 0,
              trainable: Callable[[dict[str, Any]], None] = ray_trainable) -> tune.ResultGrid:
    """Run `trainable` over `param_space` in a plain Tuner (no searcher or scheduler), reusing
    actors; Ray must already be initialised (`ray.init`)."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=max_concurrent or None,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=str(Path(storage_path).resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )
    return tuner.fit()

"""All Ray code of the project lives here, so a Ray API change touches one file.

Section "trial": `ray_trainable(config)`, the function trainable every search trial runs. `config`
is a `trials.trial_config.TrialConfig` as a dict, built once by the driver; the trainable runs
`trials.trial.Trial` on it (the same code as `python -m trials.train`), reports per epoch only what
the driver reads (`trials.trial.EPOCH_KEYS`, through `ray.tune.report` / `ray.tune.get_checkpoint`)
and honours the CPUs and GPU Ray assigned. `run_tuner` runs it in a plain Tuner (tests, quick
experiments).

Section "search driver": `connect` (local Ray or a cluster address) and `run_search`, which runs a
`nas.search.controller.SearchController` on a Tuner through a Searcher (proposals, completions)
and a Scheduler (the pruner's verdict at every epoch report), with actor reuse to keep per-trial
overhead small. Optuna is driven by the controller, not by Ray's `OptunaSearch`, which cannot
prune multi-objective studies and tells Optuna COMPLETE for trials a scheduler stopped.

Section "data-parallel training": `run_data_parallel` runs a training loop (the supernet's,
`nas.supernet.trainer.train_loop`, passed in: this layer imports nothing above it) on N workers
through Ray Train's `TorchTrainer` (one CPU worker on a laptop, N GPU workers on a cluster), which
sets up `torch.distributed` (gloo on CPU, NCCL on GPU) before the loop runs. The loop keeps its
own checkpoint directory and reports metrics only: Ray Train's checkpoints would duplicate it, and
a worker group Ray restarts after a failure (`max_failures`) continues from that directory.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search_spaces.errors import UserError
from trials.latency_step import TrainingGate, latency_report, lock_path, trial_latency
from trials.run_dir import RunDir
from trials.training import TrainingFailed, load_checkpoint
from trials.trial import EPOCH_KEYS, Trial
from trials.trial_config import TrialConfig, build_trial_config

# --- trial -------------------------------------------------------------------------------------
# An epoch's result carries only `EPOCH_KEYS`, what the search driver reads; a failed trial's
# last result carries `failed` and `reason` instead. A trial that measures its latency reports
# `latency_ms` first (and `infeasible` when it breaks the latency constraint, then stops). Ray
# adds its own keys (time_total_s).


def assigned_resources() -> tuple[int, str]:
    """(CPU threads, device) Ray gave this trial: threads = its CPUs (at least 1); CUDA only when
    Ray assigned a GPU (Ray sets CUDA_VISIBLE_DEVICES, so it is always cuda:0 here)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return max(1, int(round(cpus))), device


def ray_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: `config` is `TrialConfig.to_dict()` (plus "_" keys)."""
    run_trial(config, report=tune.report, get_checkpoint=tune.get_checkpoint)


def epoch_report(record: Mapping[str, Any]) -> dict[str, Any]:
    """The result of one epoch: the keys of `EPOCH_KEYS` the epoch's record has."""
    return {k: record[k] for k in EPOCH_KEYS if k in record}


def failure_report(err: BaseException) -> dict[str, Any]:
    """The last result of a failed trial: why, in `failed` and `reason` (no epoch or accuracy
    keys, so schedulers never rank it)."""
    if isinstance(err, TrainingFailed):
        reason = err.reason
    else:
        reason = " ".join(str(err).split())
        if isinstance(err, torch.OutOfMemoryError):
            reason = f"out of memory: {reason}"
    return {"failed": reason, "reason": reason}


def _restored_state(config: TrialConfig, checkpoint: Any) -> dict[str, Any] | None:
    """What a retry continues from: Ray's checkpoint, else the trial's own in its run directory
    (a retry after the worker or its node was lost), else nothing."""
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return load_checkpoint(RunDir(Path(directory)).checkpoint)
    own = config.run_dir
    if own is not None and own.checkpoint.is_file():
        return load_checkpoint(own.checkpoint)
    return None


def run_trial(config: Mapping[str, Any], *, report: Callable[..., None],
              get_checkpoint: Callable[[], Any]) -> None:
    """The trainable's body with Ray's session calls passed in (tests wrap `report`).

    With a `trial_dir` (every search trial), a retry continues from the trial's own per-epoch
    checkpoint there and results go to Ray without one: a Ray checkpoint would duplicate it and
    make Ray snapshot its whole experiment state every epoch (see docs/benchmarks.md). Without a
    `trial_dir`, results carry a Ray checkpoint for retries. A first attempt starts from the
    config's `resume_from` (or from scratch). A non-finite loss or a user error is reported once
    as `failed`/`reason` and the trial returns normally: retrying a deterministic failure is
    waste.
    """
    threads, device = assigned_resources()
    torch.set_num_threads(threads)
    try:
        trial_config = TrialConfig.from_dict(config)
    except UserError as err:
        report(failure_report(err))
        return
    try:  # before training, on this worker's own resources (see trials.latency_step)
        latency = trial_latency(trial_config, device, threads)
    except (UserError, RuntimeError, OSError, ValueError) as err:
        report(failure_report(err))
        return
    if latency is not None:
        measured = latency_report(trial_config, latency)
        report(measured)
        if "infeasible" in measured:  # the driver records it INFEASIBLE; nothing is trained
            return
    state = _restored_state(trial_config, get_checkpoint())
    try:
        trial = Trial(trial_config, checkpoint=state, device=device, threads=threads)
    except (UserError, torch.OutOfMemoryError) as err:
        report(failure_report(err))
        return
    if trial.done:  # restored after its last epoch: repeat the final result so Tune sees one
        report(epoch_report(trial.trainer.curve[-1]))
        return
    # A latency-measuring search: this trial's steps make way for the node's measurements.
    gate = TrainingGate(lock_path(trial_config)) if latency is not None else None
    if gate is not None:
        trial.trainer.on_step = gate.between_steps
    try:
        for record in trial.run():
            if trial_config.trial_dir:
                report(epoch_report(record))
                continue
            with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as directory:
                trial.save(directory)
                report(epoch_report(record), checkpoint=tune.Checkpoint.from_directory(directory))
    except (TrainingFailed, UserError, torch.OutOfMemoryError) as err:
        report(failure_report(err))  # UserError here: e.g. an unreadable image met mid-epoch
    finally:
        if gate is not None:
            gate.close()


def run_tuner(param_space: Mapping[str, Any], *, storage_path: str | Path,
              name: str = "trials", num_samples: int = 1, cpus_per_trial: float = 1,
              gpus_per_trial: float = 0, max_concurrent: int = 0, max_failures: int = 0,
              trainable: Callable[[dict[str, Any]], None] = ray_trainable) -> tune.ResultGrid:
    """Run `trainable` over `param_space` in a plain Tuner (no searcher or scheduler), reusing
    actors; Ray must already be initialised (`ray.init`). `param_space` is a user-facing trial
    config (`trials.trial_config.TRIAL_DEFAULTS`), decided here once into a `TrialConfig`; its
    keys starting with "_" go to Ray as given (they may be search primitives such as
    `tune.grid_search`) and reach the trainable beside the TrialConfig's keys."""
    user = {k: v for k, v in param_space.items() if not str(k).startswith("_")}
    extra = {k: v for k, v in param_space.items() if str(k).startswith("_")}
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={**build_trial_config(user).to_dict(), **extra},
        tune_config=tune.TuneConfig(num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent or None,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=str(Path(storage_path).resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )
    return tuner.fit()


# --- search driver -----------------------------------------------------------------------------
# Ray Tune runs the trials; the Ray-free `nas.search.controller.SearchController` makes every
# decision.


def available_cpus() -> float:
    return float(ray.available_resources().get("CPU", 1.0))


def available_gpus() -> float:
    return float(ray.available_resources().get("GPU", 0.0))


def largest_node() -> tuple[float, float]:
    """(CPUs, GPUs) of the biggest live node of each kind: a trial asking for more than that
    waits in Tune's queue until a bigger node joins."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return (max((float(r.get("CPU", 0.0)) for r in nodes), default=0.0),
            max((float(r.get("GPU", 0.0)) for r in nodes), default=0.0))


class _ControllerSearcher(Searcher):
    """Asks the controller for the next architecture; tells it when a trial ends."""

    def __init__(self, controller: Any) -> None:
        super().__init__()
        self.controller = controller
        self.ray_to_ours: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        proposal = self.controller.next_trial()
        if proposal is None:
            return Searcher.FINISHED
        ours, config = proposal
        self.ray_to_ours[trial_id] = ours
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # The scheduler already passed this result to the controller.

    def save(self, checkpoint_path: str) -> None:
        pass  # The controller persists everything itself (study + trials.csv).

    def restore(self, checkpoint_path: str) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        ours = self.ray_to_ours.get(trial_id)
        if ours is None:
            return
        reason = None
        if error:
            reason = self.errors.get(trial_id) or "trial raised an error (see Ray's error.txt)"
        self.controller.on_complete(ours, result, reason)


class _ControllerScheduler(FIFOScheduler):
    """Consults the controller's Optuna pruner at every epoch report."""

    def __init__(self, searcher: _ControllerSearcher) -> None:
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        ours = self.searcher.ray_to_ours.get(trial.trial_id)
        if ours is not None and self.searcher.controller.on_result(ours, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.searcher.errors[trial.trial_id] = _error_summary(trial)
        super().on_trial_error(tune_controller, trial)


class _StatusCallback(tune.Callback):
    """Tune calls `on_step_begin` on every loop of its driver, reports or not: the controller's
    `status_of_running` decides when a line is due (every 30 s while trials run)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        line = self.controller.status_of_running()
        if line is not None:
            self.controller.log(line)


def _trial_dirname(trial: Any) -> str:
    """Ray's folder for a trial is named like ours (ray/t0003 beside trials/t0003)."""
    return f"{Path(trial.config.get('trial_dir') or trial.trial_id).name}_{trial.trial_id}"


def _error_summary(trial: Any) -> str:
    """The last line of a trial's traceback, e.g. 'RuntimeError: out of memory'."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "trial raised an error"
    return lines[-1][:300] if lines else "trial raised an error"


def connect(address: str | None, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start local Ray, or join the cluster at `address`; unreachable addresses are user errors."""
    if address and address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose,
                              "configure_logging": verbose}
    if not verbose:
        kwargs["logging_level"] = logging.ERROR
        # Ray's driver-side warnings (e.g. "Token authentication is enabled for this Ray
        # cluster", logged by every new local cluster) go through the "ray" logger, which
        # configure_logging=False leaves unconfigured: its level keeps them for --verbose.
        logging.getLogger("ray").setLevel(logging.ERROR)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"cannot connect to Ray at --address {address}: {err}") from None
    else:
        # Ray starts its workers at nice 15, below the driver and Ray's own daemons: on a busy
        # machine the trials (the only work that matters) would be the first to starve. Trials
        # run at normal priority unless the user set RAY_worker_niceness.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, **kwargs)


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    host, _, port = address.replace("ray://", "").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError):
        raise UserError(
            f"cannot reach a Ray cluster at --address {address} (expected host:port of a running "
            "head node, e.g. 127.0.0.1:6379, or 'auto')"
        ) from None


def run_search(
    controller: Any,
    *,
    storage_path: Path,
    cpus_per_trial: float,
    gpus_per_trial: float,
    concurrency: int,
    max_failures: int,
    time_budget_s: float,
    verbose: bool = False,
    trainable: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run the controller's search on Ray Tune until its budget is spent (or Ctrl-C).
    `trainable` replaces `ray_trainable` (benchmarks of the framework's own overhead)."""
    # Ctrl-C raises KeyboardInterrupt in the driver instead of Tune's own graceful stop, so the
    # trials it cuts short stay RUNNING in the study and `--resume` re-queues them.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if not verbose:  # Our progress lines replace Ray's tables and sync warnings.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's own result loggers (json, csv, TensorBoard per trial) duplicate trials.csv and the
    # trials' metrics files, and its experiment-state snapshots serve `Tuner.restore`, which
    # --resume does not use (it rebuilds from the study and trials.csv); both are per-trial
    # overhead that grows with the search (see docs/benchmarks.md). Ray's own variables still
    # turn them back on.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1":  # fit()'s ResultGrid misses them
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    searcher = _ControllerSearcher(controller)
    trainable = tune.with_resources(
        trainable or ray_trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_ControllerScheduler(searcher),
            num_samples=-1,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            # No proposals after the budget; running trials get a short grace to finish.
            time_budget_s=time_budget_s + min(30.0, 0.1 * time_budget_s) + 5,
        ),
        run_config=tune.RunConfig(
            name="ray",
            storage_path=str(storage_path.resolve()),
            verbose=2 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_StatusCallback(controller)],
        ),
    )
    tuner.fit()


# --- data-parallel training --------------------------------------------------------------------
# A loop is `loop(args, rank, world_size, device, report)`: it trains on this worker's share and
# calls `report(metrics)` once per epoch on every rank (Ray Train's report is collective).
# Ray Train is imported by the two functions that use it: importing `ray.train.torch` takes about
# 3 s, which every search driver and trial worker (they import this module) would pay otherwise.

DataParallelLoop = Callable[..., None]


def _data_parallel_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the loop with this worker's rank, group size and
    device (the GPU Ray Train assigned, else the CPU), its threads set to its CPUs."""
    from ray import train
    from ray.train.torch import get_device

    context = train.get_context()
    threads, _ = assigned_resources()
    torch.set_num_threads(threads)
    device = get_device()
    config["loop"](config["args"], context.get_world_rank(), context.get_world_size(),
                   str(device), lambda metrics: train.report(dict(metrics)))


def run_data_parallel(loop: DataParallelLoop, args: Mapping[str, Any], *, storage_path: Path,
                      num_workers: int = 1, use_gpu: bool = False, cpus_per_worker: float = 1,
                      max_failures: int = 0, name: str = "train") -> dict[str, Any]:
    """Run `loop` on `num_workers` Ray Train workers (Ray must be initialised: `connect`); the
    last epoch's metrics of rank 0. A loop that raises ends the run with a UserError naming the
    worker's error."""
    from ray import train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _data_parallel_worker,
        train_loop_config={"loop": loop, "args": dict(args)},
        scaling_config=train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=train.RunConfig(
            name=name, storage_path=str(Path(storage_path).resolve()),
            failure_config=train.FailureConfig(max_failures=max_failures)),
    )
    try:
        result = trainer.fit()
    except train.TrainingFailedError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise UserError(f"data-parallel training failed: {lines[-1] if lines else err}") from None
    return dict(result.metrics or {})

"""The function trainable, in process and inside a real (tiny) Ray Tune Tuner: it runs the
TrialConfig the driver decided (no spec parsing, adapting or costing in the worker), reports per
epoch only the keys the driver reads, checkpoints, retries a crashed trial from its checkpoint
(not from scratch), reports a non-finite loss or a bad config as a failure without erroring the
trial, and trains on the CPU threads Ray assigned."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import tiny_spec

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from trials import ray_runner  # noqa: E402
from trials.training import load_checkpoint  # noqa: E402
from trials.trial import EPOCH_KEYS  # noqa: E402
from trials.trial_config import build_trial_config  # noqa: E402

BASE = {"spec": tiny_spec().to_json(), "image_size": 8, "train_fraction": 0.1, "batch_size": 32,
        "lr": 0.05, "epochs": 2, "seed": 0}
FAILURE_KEYS = {"failed", "reason"}


@pytest.fixture(scope="module")
def ray_session():
    ray_runner.connect(None, num_cpus=2)  # how the search starts a local Ray
    # Ray workers cannot import this test module by name: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


# --- in process: what the worker does and does not do -----------------------------------------
REDECIDING = (  # what resolves, adapts or costs a spec: the driver's work, never the worker's
    "trials.trial_config.build_trial_config", "trials.ray_runner.build_trial_config",
    "trials.trial_config.check_config", "trials.trial_config.resolve_arch",
    "trials.trial_config.fit_spec", "trials.trial_config.describe",
    "trials.trial_config.static_costs", "nas.models.costs.static_costs",
    "nas.models.costs.measure_costs", "search_spaces.registry.named_point",
)


def _refuse(*args, **kwargs):
    raise AssertionError("the worker re-decided what the driver had decided")


@pytest.fixture
def worker(monkeypatch):
    """`run_trial` in this process, on one CPU thread, with every function that parses, adapts
    or costs a spec made to fail while it runs; returns the reports it made."""
    before = torch.get_num_threads()

    def run(config: dict) -> list[dict]:
        reports: list[dict] = []
        with monkeypatch.context() as patch:
            for target in REDECIDING:
                patch.setattr(target, _refuse)
            patch.setattr(ray_runner, "assigned_resources", lambda: (1, "cpu"))
            ray_runner.run_trial(json.loads(json.dumps(config)), get_checkpoint=lambda: None,
                                 report=lambda metrics, **_: reports.append(metrics))
        return reports

    yield run
    torch.set_num_threads(before)


def test_the_worker_runs_the_decided_config_and_reports_what_the_driver_reads(worker, tmp_path):
    config = build_trial_config({**BASE, "trial_dir": str(tmp_path / "t0000")})
    reports = worker(config.to_dict())
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(set(r) == set(EPOCH_KEYS) for r in reports)  # digits: val_top5 is there too
    state = load_checkpoint(tmp_path / "t0000")
    assert state["costs"] == config.costs and state["spec"] == config.spec.to_dict()


def test_a_failure_reports_only_why(worker) -> None:
    config = build_trial_config({**BASE, "lr": 1e6, "grad_clip": 0.0, "label_smoothing": 0.0})
    (report,) = worker(config.to_dict())
    assert set(report) == FAILURE_KEYS and "non-finite training loss" in report["failed"]
    assert report["reason"] == report["failed"]


def test_a_malformed_config_is_a_failure_not_a_crash(worker) -> None:
    (report,) = worker({"spec": "resnest14d", "epochs": 3})  # user-facing keys: not for a worker
    assert set(report) == FAILURE_KEYS and "unknown TrialConfig key(s) epochs" in report["failed"]


# --- a real Tuner -----------------------------------------------------------------------------
@pytest.mark.slow  # starts a local Ray
def test_trials_run_at_normal_priority(ray_session) -> None:
    """Ray's default worker niceness (15) would starve trials behind Ray's own daemons."""

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


def flaky_trainable(config: dict) -> None:
    """`ray_trainable`, except the "crash" case dies once right after its first report; every
    report's keys and the torch threads it ran on are logged beside the marker."""
    case, marker = config["_case"], Path(config["_marker"])

    def report(metrics: dict, checkpoint=None) -> None:
        tune.report(metrics, checkpoint=checkpoint)
        with marker.with_suffix(f".{case}.reports").open("a") as f:
            f.write(json.dumps({"keys": sorted(metrics), "threads": torch.get_num_threads()})
                    + "\n")
        if case == "crash":  # every epoch this trial reports, over all its attempts
            with marker.with_suffix(".epochs").open("a") as f:
                f.write(f"{metrics.get('epoch')}\n")
        if case == "crash" and not marker.exists():
            marker.write_text("crashed once")
            raise RuntimeError("simulated worker crash after epoch 1")

    if case == "nan":
        config = {**config, "train": {**config["train"], "lr": 1e6, "grad_clip": 0.0,
                                      "label_smoothing": 0.0}}
    if case == "bad":  # the data is gone by the time the worker runs
        config = {**config, "data": f"folder:{marker.parent / 'gone'}"}
    ray_runner.run_trial(config, report=report, get_checkpoint=tune.get_checkpoint)


def _reports(marker: Path, case: str) -> list[dict]:
    lines = marker.with_suffix(f".{case}.reports").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow  # starts a local Ray
def test_trainable_in_a_real_tuner(ray_session, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    space = {**BASE, "_case": tune.grid_search(["ok", "crash", "nan", "bad"]),
             "_marker": str(marker)}
    grid = ray_runner.run_tuner(space, storage_path=tmp_path / "ray", name="t", max_failures=1,
                                trainable=flaky_trainable)
    results = {r.config["_case"]: r for r in grid}
    assert all(r.error is None for r in results.values()), [r.error for r in results.values()]

    ok = results["ok"]
    assert ok.metrics["epoch"] == 2 and 0 <= ok.metrics["val_top1"] <= 1
    assert list(ok.metrics_dataframe["epoch"]) == [1, 2]
    reports = _reports(marker, "ok")
    assert [r["keys"] for r in reports] == [sorted(EPOCH_KEYS)] * 2  # no costs, no state
    assert {r["threads"] for r in reports} == {1}  # 1 CPU per trial
    with ok.checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    assert state["epoch"] == 2 and len(state["curve"]) == 2

    crash = results["crash"]
    assert marker.exists()  # it did crash once ...
    assert crash.metrics["epoch"] == 2
    # ... and the retry resumed at epoch 2 from the checkpoint instead of redoing epoch 1
    assert (tmp_path / "crashed.epochs").read_text().split() == ["1", "2"]
    assert crash.metrics["val_top1"] == ok.metrics["val_top1"]  # same config, same seed: same run

    nan = results["nan"]
    assert "non-finite training loss" in nan.metrics["failed"] and "val_top1" not in nan.metrics
    assert [r["keys"] for r in _reports(marker, "nan")] == [sorted(FAILURE_KEYS)]

    bad = results["bad"]  # a user error is a failure result too: retrying it would be waste
    assert f"data path {tmp_path / 'gone'} does not exist" in bad.metrics["reason"]


@pytest.mark.slow  # starts a local Ray
def test_a_search_trial_retries_from_its_own_checkpoint(ray_session, tmp_path: Path) -> None:
    """With a trial_dir (as every search trial has) Ray gets no checkpoint copies; a crashed
    trial's retry continues from its own checkpoint in trial_dir instead of redoing its epochs."""
    trial_dir = tmp_path / "t0000"
    space = {**BASE, "_case": "crash", "_marker": str(tmp_path / "crashed"),
             "trial_dir": str(trial_dir)}
    grid = ray_runner.run_tuner(space, storage_path=tmp_path / "ray", name="t", max_failures=1,
                                trainable=flaky_trainable)
    (result,) = list(grid)
    assert result.error is None and (tmp_path / "crashed").exists()
    assert result.metrics["epoch"] == 2
    assert (tmp_path / "crashed.epochs").read_text().split() == ["1", "2"]
    assert result.checkpoint is None and not list((tmp_path / "ray").rglob("checkpoint_*"))
    assert load_checkpoint(trial_dir)["epoch"] == 2

"""The function trainable inside a real (tiny) Ray Tune Tuner: per-epoch reports with static costs
and checkpoints, a crashed trial retried from its checkpoint (not from scratch), a non-finite loss
or a bad config reported as FAIL without erroring the trial, and the CPU threads Ray assigned."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from data_fixtures import tiny_spec

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from trials import ray_runner  # noqa: E402
from trials.training import load_checkpoint  # noqa: E402

BASE = {"spec": tiny_spec().to_json(), "image_size": 8, "train_fraction": 0.1, "batch_size": 32,
        "lr": 0.05, "epochs": 2, "seed": 0}


@pytest.fixture(scope="module")
def ray_session():
    ray_runner.connect(None, num_cpus=2)  # how the search starts a local Ray
    # Ray workers cannot import this test module by name: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def test_trials_run_at_normal_priority(ray_session) -> None:
    """Ray's default worker niceness (15) would starve trials behind Ray's own daemons."""

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


def flaky_trainable(config: dict) -> None:
    """`ray_trainable`, except the "crash" case dies once right after its first report."""
    case, marker = config["_case"], Path(config["_marker"])

    def report(metrics: dict, checkpoint=None) -> None:
        tune.report(metrics, checkpoint=checkpoint)
        if case == "crash":  # every epoch this trial reports, over all its attempts
            with marker.with_suffix(".epochs").open("a") as f:
                f.write(f"{metrics.get('epoch')}\n")
        if case == "crash" and not marker.exists():
            marker.write_text("crashed once")
            raise RuntimeError("simulated worker crash after epoch 1")

    if case == "nan":
        config = {**config, "lr": 1e6, "grad_clip": 0.0, "label_smoothing": 0.0}
    if case == "bad":
        config = {**config, "image_size": 4}
    ray_runner.run_trial(config, report=report, get_checkpoint=tune.get_checkpoint)


def test_trainable_in_a_real_tuner(ray_session, tmp_path: Path) -> None:
    space = {**BASE, "_case": tune.grid_search(["ok", "crash", "nan", "bad"]), "_marker": str(tmp_path / "crashed")}
    grid = ray_runner.run_tuner(space, storage_path=tmp_path / "ray", name="t", max_failures=1,
                                trainable=flaky_trainable)
    results = {r.config["_case"]: r for r in grid}
    assert all(r.error is None for r in results.values()), [r.error for r in results.values()]

    ok = results["ok"]
    assert ok.metrics["epoch"] == 2 and ok.metrics["state"] == "COMPLETE"
    assert ok.metrics["params"] > 0 and ok.metrics["macs"] > 0 and 0 <= ok.metrics["val_top1"] <= 1
    assert ok.metrics["threads"] == 1 and ok.metrics["device"] == "cpu"  # 1 CPU per trial
    assert list(ok.metrics_dataframe["epoch"]) == [1, 2]
    with ok.checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    assert state["epoch"] == 2 and len(state["curve"]) == 2

    crash = results["crash"]
    assert (tmp_path / "crashed").exists()  # it did crash once ...
    assert crash.metrics["epoch"] == 2 and crash.metrics["state"] == "COMPLETE"
    # ... and the retry resumed at epoch 2 from the checkpoint instead of redoing epoch 1
    assert (tmp_path / "crashed.epochs").read_text().split() == ["1", "2"]
    assert crash.metrics["val_top1"] == ok.metrics["val_top1"]  # same config, same seed: same run

    nan = results["nan"]
    assert nan.metrics["state"] == "FAIL" and "non-finite training loss" in nan.metrics["failed"]
    assert "val_top1" not in nan.metrics and nan.metrics["params"] == ok.metrics["params"]

    bad = results["bad"]  # a user error is a FAIL result too: retrying it would be waste
    assert bad.metrics["state"] == "FAIL" and "image size 4 is too small" in bad.metrics["reason"]


def test_a_search_trial_retries_from_its_own_checkpoint(ray_session, tmp_path: Path) -> None:
    """With a trial_dir (as every search trial has) Ray gets no checkpoint copies; a crashed
    trial's retry continues from trial_dir/checkpoint.pt instead of redoing its epochs."""
    trial_dir = tmp_path / "t0000"
    space = {**BASE, "_case": "crash", "_marker": str(tmp_path / "crashed"),
             "trial_dir": str(trial_dir)}
    grid = ray_runner.run_tuner(space, storage_path=tmp_path / "ray", name="t", max_failures=1,
                                trainable=flaky_trainable)
    (result,) = list(grid)
    assert result.error is None and (tmp_path / "crashed").exists()
    assert result.metrics["epoch"] == 2 and result.metrics["state"] == "COMPLETE"
    assert (tmp_path / "crashed.epochs").read_text().split() == ["1", "2"]
    assert result.checkpoint is None and not list((tmp_path / "ray").rglob("checkpoint_*"))
    assert load_checkpoint(trial_dir / "checkpoint.pt")["epoch"] == 2

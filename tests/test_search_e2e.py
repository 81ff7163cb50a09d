"""`python -m nas.search` end to end on digits with real Ray Tune runs (tiny budgets)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from nas.experiment import read_trials_csv
from nas.search.recovery import is_interrupted
from search_spaces import named_point

REQUIRED_COLUMNS = {"trial_id", "state", "reason", "tag", "spec", "params", "macs", "latency_ms",
                    "accuracy", "best_accuracy", "epochs"}
OPTUNA_STATE = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAIL",
                "INFEASIBLE": "COMPLETE"}


def search(out: Path, name: str, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        # A generous budget: these tests count trials, so the clock must not cut them short.
        [sys.executable, "-m", "nas.search", "--smoke", "--time-budget", "15m", "--out", str(out),
         "--name", name, *args],
        capture_output=True, text=True, timeout=timeout,
    )


def load_study(exp: Path) -> optuna.Study:
    """The search's default study, opened as the README shows."""
    storage = JournalStorage(JournalFileBackend(str(exp / "study.journal")))
    return optuna.load_study(study_name=exp.name, storage=storage)


@pytest.fixture(scope="module")
def mo_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Multi-objective search with the pareto pruner, a MACs constraint and a seed point."""
    out = tmp_path_factory.mktemp("search")
    # One trial at a time: seeded sampler + deterministic CPU training = a reproducible run.
    proc = search(out, "mo", "--trials", "7", "--epochs", "3", "--max-macs", "3e6",
                  "--concurrency", "1", "--seed-points", "resnest14d,resnest50_fast_1s1x64d")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "mo", proc.stdout


@pytest.mark.slow
def test_multi_objective_search_records_every_trial(mo_search: tuple[Path, str]) -> None:
    exp, stdout = mo_search
    with (exp / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert REQUIRED_COLUMNS <= set(rows[0])
    records = read_trials_csv(exp)
    trained = [r for r in records if r.state != "INFEASIBLE"]
    assert len(trained) == 7
    assert {r.state for r in records} <= {"COMPLETE", "PRUNED", "FAIL", "INFEASIBLE"}
    assert any(r.state == "COMPLETE" for r in records)
    # Optuna agrees on every trial's state; nothing was told COMPLETE with a partial curve.
    study = load_study(exp)
    by_number = {t.number: t for t in study.trials}
    assert sorted(by_number) == sorted(r.number for r in records)  # every trial, none else
    for r in records:
        assert by_number[r.number].state.name == OPTUNA_STATE[r.state], r
        if r.state == "COMPLETE":
            assert r.epochs == 3 and by_number[r.number].values[0] == pytest.approx(r.accuracy)
    # The printed front lists completed trials only.
    front_ids = [line.split()[0] for line in stdout.split("Pareto front")[1].splitlines()[2:]
                 if line.startswith("t0")]
    assert front_ids
    states = {r.trial_id: r.state for r in records}
    assert all(states[t] == "COMPLETE" for t in front_ids)
    # Ray keeps no per-trial result logs or checkpoint copies: trials.csv and each trial's own
    # files (its checkpoint is what a retry continues from) replace them.
    ray_dir = exp / "ray"
    assert not [p for p in ray_dir.rglob("*") if p.name in ("result.json", "progress.csv")
                or p.name.startswith(("events.out", "checkpoint_"))]
    assert all((exp / "trials" / r.trial_id / "checkpoint.pt").is_file() for r in trained)


@pytest.mark.slow
def test_pareto_pruner_pruned_some_trials(mo_search: tuple[Path, str]) -> None:
    exp, _ = mo_search
    pruned = [r for r in read_trials_csv(exp) if r.state == "PRUNED"]
    assert pruned
    study = load_study(exp)
    for r in pruned:
        assert study.trials[r.number].state == optuna.trial.TrialState.PRUNED
        assert r.curve and r.epochs < 3 and r.reason.startswith("pruned at epoch")


@pytest.mark.slow
def test_constraint_violators_are_never_trained(mo_search: tuple[Path, str]) -> None:
    exp, _ = mo_search
    records = read_trials_csv(exp)
    for r in records:
        if r.state == "INFEASIBLE":
            assert r.costs["macs"] > 3e6 and not r.curve
            assert not (exp / "trials" / r.trial_id).exists()
        else:
            assert r.costs["macs"] <= 3e6
    # resnest14d (about 50 M MACs at 8 px) violates the constraint: refused, never trained, and
    # evaluated first as a seed point.
    seed = named_point("resnest14d").replace(num_classes=10, in_channels=1, input_regime="small")
    first = min(records, key=lambda r: r.number)
    assert first.spec == seed and first.state == "INFEASIBLE"


@pytest.mark.slow
def test_single_objective_search_with_optuna_pruner(tmp_path: Path) -> None:
    # The study lives in a separate database given by --storage (as a shared PostgreSQL would).
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    proc = search(tmp_path, "so", "--objectives", "accuracy", "--pruner", "median",
                  "--trials", "5", "--epochs", "2", "--storage", url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "so" / "study.journal").exists()
    study = optuna.load_study(study_name="so", storage=url)
    assert len(study.directions) == 1
    records = read_trials_csv(tmp_path / "so")
    assert len(records) == 5
    for r in records:
        assert study.trials[r.number].state.name == OPTUNA_STATE[r.state]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_resume_after_kill_9_loses_and_reruns_nothing(tmp_path: Path) -> None:
    """Killed with trials running, resumed: finished trials are kept as they were, the cut-short
    architectures run again without counting twice, and every file is as readable by the group
    as the umask (here 027) allows."""
    exp = tmp_path / "rs"
    cmd = [sys.executable, "-m", "nas.search", "--smoke", "--time-budget", "15m", "--out",
           str(tmp_path), "--name", "rs",
           "--trials", "6", "--epochs", "2", "--pruner", "none"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, umask=0o027)
    try:
        _wait_for(lambda: sum(r.state == "COMPLETE" for r in read_trials_csv(exp)) >= 2
                  if (exp / "trials.csv").exists() else False, 300, "two completed trials")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {r.trial_id: r for r in read_trials_csv(exp) if r.state == "COMPLETE"}
    stamps = {t: (exp / "trials" / t / "checkpoint.pt").stat().st_mtime_ns for t in before}
    started = {r.spec for r in read_trials_csv(exp)}
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=420,
                          umask=0o027)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {r.trial_id: r for r in read_trials_csv(exp)}
    for trial_id, record in before.items():
        assert after[trial_id] == record  # kept exactly, not re-run
        assert (exp / "trials" / trial_id / "checkpoint.pt").stat().st_mtime_ns == stamps[trial_id]
    finished = [r for r in after.values() if not is_interrupted(r)]
    assert len(finished) == 6 and all(r.state == "COMPLETE" for r in finished)
    assert started <= {r.spec for r in finished}  # every architecture started was evaluated
    assert not [r for r in after.values() if r.state == "RUNNING"]
    assert not [t for t in load_study(exp).trials if t.state.name == "RUNNING"]
    assert json.loads((exp / "experiment.json").read_text())["trials"] == 6
    modes = {p: p.stat().st_mode & 0o777 for p in exp.rglob("*") if not p.is_symlink()}
    assert {p: m for p, m in modes.items() if m & 0o040 == 0 or m & 0o007} == {}


@pytest.mark.slow
def test_a_second_driver_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    exp = tmp_path / "two"
    cmd = [sys.executable, "-m", "nas.search", "--smoke", "--time-budget", "15m", "--out",
           str(tmp_path), "--name", "two", "--trials", "3", "--epochs", "2", "--pruner", "none"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(r.state == "RUNNING" for r in read_trials_csv(exp))
              if (exp / "trials.csv").exists() else False, 300, "a running trial")
    for extra in (["--resume"], []):
        second = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert f"being searched by another driver (pid {first.pid} on host" in second.stderr
    out, err = first.communicate(timeout=420)
    assert first.returncode == 0, err[-3000:]
    records = read_trials_csv(exp)
    assert [r.trial_id for r in records] == ["t0000", "t0001", "t0002"]
    assert all(r.state == "COMPLETE" for r in records)


@pytest.mark.slow
def test_two_node_cluster_survives_losing_a_node(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from nas.search.cli import main

    ray.shutdown()  # The search must join this cluster, not a Ray started by an earlier test.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    exp = tmp_path / "cl"

    def trials_training() -> int:
        return sum(1 for m in exp.glob("trials/*/metrics.jsonl") if m.read_text().strip())

    def remove_worker_once_running() -> None:
        try:  # Both nodes hold a trial that has finished its first epoch: kill one mid-training.
            _wait_for(lambda: trials_training() >= 2, 240, "two trials training")
        finally:
            cluster.remove_node(worker)

    remover = threading.Thread(target=remove_worker_once_running, daemon=True)
    remover.start()
    try:
        code = main(["--smoke", "--time-budget", "15m", "--out", str(tmp_path), "--name", "cl",
                     "--address",
                     cluster.address, "--trials", "4", "--epochs", "3", "--pruner", "none",
                     "--concurrency", "2", "--max-failures", "3"])
    finally:
        remover.join(timeout=200)
        ray.shutdown()
        cluster.shutdown()
    assert code == 0
    records = read_trials_csv(exp)
    assert len(records) == 4
    assert not [r for r in records if r.state == "RUNNING"]
    # The trial lost with the node was retried on the surviving node and finished.
    errors = [p.read_text() for p in (exp / "ray").glob("*/error.txt")]
    assert any("node" in text and "died" in text for text in errors), errors
    assert all(r.state == "COMPLETE" and r.epochs == 3 for r in records)


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_search_continues(tmp_path: Path) -> None:
    # A learning rate this large drives every loss to inf/NaN: each trial ends FAIL with its reason.
    proc = search(tmp_path, "nan", "--trials", "2", "--epochs", "2", "--lr", "1e12",
                  "--pruner", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_trials_csv(tmp_path / "nan")
    assert len(records) == 2
    study = load_study(tmp_path / "nan")
    for r in records:
        assert r.state == "FAIL" and "non-finite" in r.reason, r
        assert study.trials[r.number].state.name == "FAIL"
    assert "failed 2" in proc.stdout

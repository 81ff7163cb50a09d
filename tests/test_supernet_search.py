"""Supernet training (checkpoint, resume, Ray Train) and the search's supernet estimator, on
digits at 8 px with a few batches per epoch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.supernet import SupernetConfig
from nas.supernet.train import main as _train_main
from nas.supernet.trainer import (
    SupernetDir,
    SupernetJob,
    SupernetTarget,
    SupernetTrainConfig,
    load_state,
    load_supernet,
    read_manifest,
    resume_check,
    train_loop,
)
from search_spaces.errors import UserError

TINY = ["--data", "digits", "--image-size", "8", "--epochs", "2", "--batch-size", "16",
        "--max-batches", "2", "--calib-batches", "1", "--n-random", "1", "--train-fraction", "1"]


def train_main(argv: list[str]) -> int:
    """The CLI's exit status (argparse's own errors exit through SystemExit)."""
    try:
        return _train_main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """Tiny convs on a shared 2-core machine run about 10x slower oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_job(epochs: int = 3) -> SupernetJob:
    return SupernetJob(SupernetTarget("resnest", "small", "digits", 8, 1.0), SupernetConfig(),
                       SupernetTrainConfig(epochs=epochs, batch_size=16, max_batches=2,
                                           calib_batches=1, n_random=1))


def _state(path: Path) -> dict:
    return load_state(path, read_manifest(path))


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _without_time(curve: tuple[dict, ...]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in curve]


def test_checkpoint_and_resume_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    job = tiny_job(epochs=3)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_loop({"job": job.to_dict(), "out": str(whole)})
    train_loop({"job": job.to_dict(), "out": str(parts), "stop_after": 1})
    assert read_manifest(parts).epoch == 1 and not read_manifest(parts).complete
    torch.manual_seed(999)  # whatever the process did meanwhile does not matter
    train_loop({"job": job.to_dict(), "out": str(parts)})
    a, b = _state(whole), _state(parts)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("supernet", "optimizer", "scheduler", "rng", "job"):
        assert _same(a[key], b[key]), key
    assert _without_time(read_manifest(whole).curve) == _without_time(read_manifest(parts).curve)
    # One state file: the manifest's; the older epochs' are gone.
    assert sorted(p.name for p in parts.iterdir()) == ["supernet-epoch0003.pt", "supernet.json"]
    manifest = json.loads(SupernetDir(parts).manifest.read_text())
    assert manifest["complete"] and manifest["job"]["target"]["data"] == "digits"
    assert manifest["job"]["supernet"]["stage_depths"] == [[1, 2]] * 4
    supernet, _ = load_supernet(parts)
    assert _same(supernet.state_dict(), a["supernet"])


def test_a_resume_in_the_middle_of_a_shrinking_phase_equals_an_uninterrupted_run(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """3 epochs of 3 steps over OFA's 5 phases: steps 0-8 are in phases 0 0 1 | 1 2 2 | 3 3 4,
    so epoch 2 starts in the middle of phase 1 (elastic depth)."""
    base = tiny_job(epochs=3)
    job = SupernetJob(base.target, base.supernet,
                      SupernetTrainConfig(**{**base.train.__dict__, "max_batches": 3,
                                             "shrink": "ofa"}))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_loop({"job": job.to_dict(), "out": str(whole)})
    train_loop({"job": job.to_dict(), "out": str(parts), "stop_after": 1})
    torch.manual_seed(999)
    train_loop({"job": job.to_dict(), "out": str(parts)})
    a, b = _state(whole), _state(parts)
    for key in ("supernet", "optimizer", "scheduler", "rng", "job"):
        assert _same(a[key], b[key]), key
    curve = read_manifest(parts).curve
    assert _without_time(read_manifest(whole).curve) == _without_time(curve)
    assert [r["shrink_phase"] for r in curve] == ["depth", "depth+width", "all"]
    stored = json.loads(SupernetDir(parts).manifest.read_text())["job"]["train"]
    assert stored["shrink"] == "ofa" and read_manifest(parts).job.train.shrink == "ofa"
    # Shrinking changes the training; without it the curve has no phases.
    off = SupernetJob(job.target, job.supernet,
                      SupernetTrainConfig(**{**job.train.__dict__, "shrink": "off"}))
    train_loop({"job": off.to_dict(), "out": str(tmp_path / "off"), "stop_after": 1})
    assert not _same(_state(tmp_path / "off")["supernet"], _state(whole)["supernet"])
    assert "shrink_phase" not in read_manifest(tmp_path / "off").curve[0]
    # The CLI resumes it with its schedule, and refuses another.
    assert train_main(["--no-ray", "--out", str(parts), "--resume", "--shrink", "off"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shrink gives 'off', the checkpoint has 'ofa'" in err


def test_a_manifest_without_a_schedule_is_one_trained_without_shrinking(tmp_path: Path) -> None:
    """Supernets trained before `shrink` existed load and resume as `off`."""
    train_loop({"job": tiny_job(1).to_dict(), "out": str(tmp_path)})
    files = SupernetDir(tmp_path)
    data = json.loads(files.manifest.read_text())
    assert data["job"]["train"].pop("shrink") == "off"
    files.manifest.write_text(json.dumps(data))
    assert read_manifest(tmp_path).job == tiny_job(1)
    assert resume_check(tmp_path, tiny_job(1)) is not None


def test_the_search_trains_its_supernet_with_the_schedule_given() -> None:
    from nas.search.cli import build_parser, estimator_config

    def train_settings(*flags: str) -> SupernetTrainConfig:
        args = build_parser().parse_args(["--estimator", "supernet", *flags])
        return SupernetTrainConfig(**estimator_config(args, "small")[0]["train"])

    assert train_settings("--supernet-shrink", "family-first").shrink == "family-first"
    assert train_settings().shrink == "off"


def test_a_job_of_other_settings_is_not_resumed(tmp_path: Path) -> None:
    train_loop({"job": tiny_job(1).to_dict(), "out": str(tmp_path)})
    other = tiny_job(1)
    other = SupernetJob(other.target, other.supernet,
                        SupernetTrainConfig(**{**other.train.__dict__, "lr": 0.05}))
    with pytest.raises(UserError, match=r"train.lr 0.05 \(the checkpoint's: 0.1\)"):
        train_loop({"job": other.to_dict(), "out": str(tmp_path)})


def test_cli_trains_resumes_and_says_when_done(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sn"
    assert train_main([*TINY, "--no-ray", "--out", str(out), "--epochs", "1"]) == 0
    assert read_manifest(out).epoch == 1
    assert train_main(["--no-ray", "--out", str(out), "--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().out
    err = capsys.readouterr().err
    assert train_main(["--no-ray", "--out", str(out), "--resume", "--lr", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr gives 0.3, the checkpoint has 0.1" in err


def test_help_states_every_default() -> None:
    proc = subprocess.run([sys.executable, "-m", "nas.supernet.train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    blocks = re.split(r"\n  (?=-)", proc.stdout.split("options:")[1])
    helps = {b.split()[0].rstrip(","): " ".join(b.split()) for b in blocks if b.strip()}
    for flag in ("--epochs", "--batch-size", "--lr", "--weight-decay", "--warmup-epochs",
                 "--n-random", "--max-batches", "--calib-batches", "--seed", "--workers",
                 "--cpus-per-worker", "--max-failures", "--device", "--image-size",
                 "--train-fraction", "--data", "--space", "--preset", "--shrink"):
        assert "default" in helps[flag], helps[flag]


BAD_TRAIN = [
    (["--preset", "imagenet"], "covers the small preset only"),
    (["--space", "nosuch"], "nosuch"),
    (["--data", "nosuch"], "unknown data"),
    (["--image-size", "4"], "too small for the supernet"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "nan"], "finite"),
    (["--train-fraction", "1.5"], "--train-fraction must be in (0, 1]"),
    (["--n-random", "-1"], "--n-random must be an integer >= 0"),
    (["--shrink", "fast"], "--shrink must be one of off, ofa, family-first, got 'fast'"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--no-ray", "--workers", "2"], "--no-ray trains in this process"),
    (["--gpu"] if not torch.cuda.is_available() else ["--gpu", "--workers", "99"], "GPU"),
    (["--device", "cuda"], "--device applies with --no-ray"),
    (["--resume"], "is not a supernet checkpoint"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_TRAIN)
def test_bad_training_inputs_are_refused_in_one_line_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    out = tmp_path / "sn"
    if "--resume" in argv:
        out.mkdir()
    assert train_main([*TINY, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_an_existing_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file.txt").write_text("x")
    assert train_main([*TINY, "--no-ray", "--out", str(tmp_path)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_a_damaged_checkpoint_directory_is_refused(tmp_path: Path) -> None:
    files = SupernetDir(tmp_path)
    files.manifest.write_text("{not json")
    with pytest.raises(UserError, match="is not a supernet manifest"):
        read_manifest(tmp_path)
    files.manifest.write_text(json.dumps({"format": "resnest-nas/supernet/1", "job": {}}))
    with pytest.raises(UserError, match="is not a supernet manifest"):
        read_manifest(tmp_path)
    train_loop({"job": tiny_job(1).to_dict(), "out": str(tmp_path / "ok")})
    state = next((tmp_path / "ok").glob("*.pt"))
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UserError, match="is not a readable supernet state"):
        load_supernet(tmp_path / "ok")


def test_one_ray_train_worker_trains_what_the_process_trains(tmp_path: Path) -> None:
    """Through Ray Train's TorchTrainer (one CPU worker, one thread): the same weights as the
    in-process loop."""
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert train_main([*TINY, "--no-ray", "--out", str(local)]) == 0
    proc = subprocess.run([sys.executable, "-m", "nas.supernet.train", *TINY, "--out", str(ray)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 1 Ray Train worker(s)" in proc.stdout and "epoch 2/2" in proc.stdout
    assert _same(_state(local)["supernet"], _state(ray)["supernet"])
    assert _without_time(read_manifest(local).curve) == _without_time(read_manifest(ray).curve)


# The search's supernet estimator ---------------------------------------------------------------
def search(out: Path, name: str, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas.search", "--smoke", "--data", "digits", "--time-budget", "15m",
         "--out", str(out), "--name", name, "--estimator", "supernet", *args],
        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_supernet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A supernet trained in-process for the smoke search on digits (8 px, all of train)."""
    out = tmp_path_factory.mktemp("supernet") / "sn"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = SupernetJob(SupernetTarget("resnest", "small", "digits", 8, 1.0), SupernetConfig(),
                          SupernetTrainConfig(epochs=2, batch_size=16, max_batches=3,
                                              calib_batches=2))
        train_loop({"job": job.to_dict(), "out": str(out)})
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def unfinished_supernet(tmp_path_factory: pytest.TempPathFactory, digits_supernet: Path) -> Path:
    """`digits_supernet`'s job stopped after its first epoch."""
    out = tmp_path_factory.mktemp("supernet") / "unfinished"
    job = read_manifest(digits_supernet).job
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_loop({"job": job.to_dict(), "out": str(out), "stop_after": 1})
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_supernet_search_estimates_fine_tunes_and_exports(tmp_path: Path,
                                                            digits_supernet: Path) -> None:
    from nas.experiment import read_trials_csv

    first = search(tmp_path, "e", "--supernet", str(digits_supernet), "--trials", "5",
                   "--finetune", "99")
    assert first.returncode == 2, first.stderr[-3000:]
    lines = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--finetune 99 is larger than the estimated front" in lines[0]
    exp = tmp_path / "e"
    estimated = read_trials_csv(exp)
    assert len(estimated) == 5 and {r.estimator for r in estimated} == {"supernet"}
    assert all(r.state == "COMPLETE" and r.epochs == 0 and 0 < r.accuracy <= 1
               for r in estimated)
    header = (exp / "trials.csv").read_text().splitlines()[0].split(",")
    assert "estimator" in header
    assert json.loads((exp / "experiment.json").read_text())["estimator"] == "supernet"
    # The estimated trials' checkpoints hold the inherited weights: they export.
    best = max(estimated, key=lambda r: r.accuracy)
    export = subprocess.run([sys.executable, "-m", "nas.export", str(exp), "--trial",
                             best.trial_id, "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    meta = json.loads(next((tmp_path / "x").glob("*.json")).read_text())
    assert meta["trial"]["trial_id"] == best.trial_id
    # --finetune may change on resume: the best estimated trial trains per candidate. Without
    # trials.csv, the estimated rows are rebuilt from the study and the trials' metrics.
    (exp / "trials.csv").unlink()
    second = search(tmp_path, "e", "--resume", "--finetune", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "rebuilt 5 row(s)" in second.stderr
    records = read_trials_csv(exp)
    tuned = [r for r in records if r.estimator == "train"]
    assert len(tuned) == 1 and tuned[0].state == "COMPLETE" and tuned[0].epochs == 2
    assert tuned[0].spec == best.spec
    assert "Pareto front of the fine-tuned trials (1 of 6" in second.stdout
    assert [r for r in records if r.estimator == "supernet"] == estimated  # kept as they were


def test_old_trials_csv_without_the_estimator_column_loads(tmp_path: Path) -> None:
    from nas.experiment import read_trials_csv

    rows = ["trial_id,number,state,reason,tag,spec_hash,spec,params,macs,latency_ms,"
            "peak_memory_bytes,accuracy,best_accuracy,epochs,seconds,checkpoint,curve"]
    from search_spaces import named_point

    spec = named_point("resnest14d")
    line = ["t0000", "0", "COMPLETE", "", spec.tag, spec.spec_hash,
            '"' + spec.to_json().replace('"', '""') + '"', "1", "2", "", "", "0.5", "0.5", "1",
            "1.0", "", '"[{""epoch"": 1, ""val_top1"": 0.5}]"']
    (tmp_path / "trials.csv").write_text("\n".join([rows[0], ",".join(line)]) + "\n")
    (record,) = read_trials_csv(tmp_path)
    assert record.estimator == "train" and record.accuracy == 0.5


BAD_SEARCH = [
    (["--supernet", "{missing}"], "is not a directory"),
    (["--supernet", "{empty}"], "is not a supernet checkpoint"),
    (["--supernet", "{supernet}", "--image-size", "16"],
     "was trained for another search: image_size 16 (the supernet's: 8)"),
    (["--supernet", "{supernet}", "--train-fraction", "0.5"],
     "train_fraction 0.5 (the supernet's: 1.0)"),
    (["--supernet", "{supernet}", "--data", "fashion-mnist-subset", "--train-fraction", "1"],
     "data 'fashion-mnist-subset' (the supernet's: 'digits')"),
    (["--supernet", "{unfinished}"], "holds 1 of its 2 epochs"),
    (["--supernet", "{supernet}", "--seed-points", "resnest14d"],
     "--seed-points resnest14d is outside the supernet: stem_width=32"),
    (["--preset", "imagenet"], "covers the small preset only"),
    (["--supernet", "{supernet}", "--supernet-epochs", "3"], "give one of them"),
    (["--finetune", "-1"], "--finetune must be >= 0"),
    (["--finetune-from", "nowhere"], "--finetune-from must be inherited or scratch"),
    (["--supernet-epochs", "0"], "--supernet-epochs must be positive"),
    (["--supernet-shrink", "fast"],
     "--supernet-shrink must be one of off, ofa, family-first, got 'fast'"),
    (["--supernet", "{supernet}", "--supernet-shrink", "ofa"], "give one of them"),
    (["--objectives", "accuracy,latency"], "predict it with --latency-table"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_SEARCH)
def test_bad_supernet_search_inputs_are_refused_in_one_line_and_write_nothing(
        tmp_path: Path, digits_supernet: Path, unfinished_supernet: Path,
        capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    from nas.search.cli import main as search_main

    (tmp_path / "empty").mkdir()
    unfinished = unfinished_supernet
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "supernet": digits_supernet, "unfinished": unfinished}
    argv = [a.format(**paths) for a in argv]
    out = tmp_path / "out"
    try:
        code = search_main(["--smoke", "--data", "digits", "--estimator", "supernet", "--out",
                            str(out), *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--supernet", "x"], ["--supernet-epochs", "2"],
                                  ["--supernet-shrink", "ofa"],
                                  ["--finetune", "1"], ["--finetune-from", "scratch"]])
def test_supernet_flags_need_the_supernet_estimator(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    flag: list[str]) -> None:
    from nas.search.cli import main as search_main

    assert search_main(["--smoke", "--out", str(tmp_path / "o"), *flag]) == 2
    assert f"{flag[0]} applies only with --estimator supernet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _kill_when(cmd: list[str], ready: object, what: str) -> None:
    """Start the search, wait until `ready()`, then kill -9 the driver."""
    import os
    import signal
    import time

    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if ready():
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the search ended or timed out before {what}")
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    time.sleep(3)  # Ray ends a dead driver's workers


def test_a_killed_supernet_search_resumes(tmp_path: Path) -> None:
    """kill -9 while the search trains its supernet (on a Ray Train worker), resume, kill -9
    again while it scores proposals, resume: the supernet continues from its last epoch, scored
    trials are kept as they were, and every architecture is scored once."""
    from nas.experiment import read_trials_csv
    from nas.search.recovery import is_interrupted

    exp = tmp_path / "k"
    cmd = [sys.executable, "-m", "nas.search", "--smoke", "--data", "digits", "--time-budget",
           "15m", "--out", str(tmp_path), "--name", "k", "--estimator", "supernet",
           "--supernet-epochs", "4", "--trials", "30"]
    manifest = exp / "supernet" / "supernet.json"

    def trained_an_epoch() -> bool:
        return manifest.is_file() and json.loads(manifest.read_text())["epoch"] >= 1

    _kill_when(cmd, trained_an_epoch, "the supernet finished an epoch")
    assert json.loads(manifest.read_text())["epoch"] < 4 and not read_trials_csv(exp)

    def scored_some() -> bool:
        try:
            return sum(r.state == "COMPLETE" for r in read_trials_csv(exp)) >= 3
        except UserError:
            return False

    _kill_when([*cmd, "--resume"], scored_some, "three trials were scored")
    final = read_manifest(exp / "supernet")
    assert final.complete and [r["epoch"] for r in final.curve] == [1, 2, 3, 4]
    before = {r.trial_id: r for r in read_trials_csv(exp) if r.state == "COMPLETE"}
    assert 3 <= len(before) < 30
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {r.trial_id: r for r in read_trials_csv(exp)}
    assert all(after[t] == r for t, r in before.items())  # kept exactly, not re-scored
    finished = [r for r in after.values() if not is_interrupted(r)]
    assert len(finished) == 30 and all(r.state == "COMPLETE" and r.estimator == "supernet"
                                       for r in finished)
    assert not [r for r in after.values() if r.state == "RUNNING"]


def _fake_controller(records: list, front: list) -> object:
    from types import SimpleNamespace

    study = SimpleNamespace(pruner=None)
    return SimpleNamespace(records={r.trial_id: r for r in records}, queue=[], reruns=0,
                           config=None, study=study, stopped=True, started=0.0,
                           estimator="supernet", front=lambda estimator=None: list(front))


@pytest.mark.parametrize("start", ["inherited", "scratch"])
def test_finetuning_queues_the_best_estimates_not_yet_trained(tmp_path: Path,
                                                              start: str) -> None:
    import dataclasses

    import optuna

    from nas.experiment import ExperimentConfig, ExperimentDir, TrialRecord
    from nas.search.estimator import prepare_finetune, to_finetune
    from search_spaces import named_point

    specs = [named_point(n) for n in ("resnest14d", "resnest26d", "resnest50d")]
    est = [TrialRecord(f"t000{i}", i, "COMPLETE", s, {"macs": 1.0 + i},
                       ({"epoch": 0, "val_top1": acc},), estimator="supernet")
           for i, (s, acc) in enumerate(zip(specs, (0.5, 0.7, 0.6), strict=True))]
    tuned = TrialRecord("t0003", 3, "COMPLETE", specs[1], {"macs": 2.0},
                        ({"epoch": 1, "val_top1": 0.9},))
    config = ExperimentConfig(name="f", space="resnest", preset="small", data="digits",
                              image_size=8, objectives=("accuracy", "macs"), epochs=1, trials=3,
                              time_budget_s=60.0, sampler="random", pruner="pareto", seed=0,
                              storage="", estimator="supernet", finetune=2,
                              finetune_from=start)
    controller = _fake_controller([*est, tuned], est)
    assert [r.trial_id for r in to_finetune(controller, config)] == ["t0001", "t0002"]
    assert prepare_finetune(controller, config, tmp_path, [])
    # t0001's spec is trained already: only t0002 waits, from its inherited checkpoint or not.
    inherited = str(ExperimentDir(tmp_path).trial("t0002").checkpoint)
    assert controller.queue == [(specs[2], inherited if start == "inherited" else None)]
    assert controller.estimator == "train" and controller.config.trials == 3 + 2
    assert isinstance(controller.study.pruner, optuna.pruners.NopPruner)
    with pytest.raises(UserError, match="--finetune 4 is larger than the estimated front"):
        to_finetune(controller, dataclasses.replace(config, finetune=4))
    # The sampler proposed t0002's architecture again: it is fine-tuned once, and counted once.
    again = dataclasses.replace(est[2], trial_id="t0004", number=4)
    controller = _fake_controller([*est, again], [*est, again])
    assert [r.trial_id for r in to_finetune(controller, dataclasses.replace(
        config, finetune=3))] == ["t0001", "t0002", "t0000"]
    with pytest.raises(UserError, match=r"estimated front \(3 architecture\(s\)\)"):
        to_finetune(controller, dataclasses.replace(config, finetune=4))


def test_two_ray_train_workers_train_data_parallel(tmp_path: Path) -> None:
    """Two CPU workers (gloo): each trains on half of every batch, gradients averaged."""
    out = tmp_path / "dp"
    proc = subprocess.run([sys.executable, "-m", "nas.supernet.train", *TINY, "--workers", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 Ray Train worker(s)" in proc.stdout
    manifest = read_manifest(out)
    assert manifest.complete and [r["steps"] for r in manifest.curve] == [2, 2]

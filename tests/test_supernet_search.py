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
                 "--train-fraction", "--data", "--space", "--preset"):
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

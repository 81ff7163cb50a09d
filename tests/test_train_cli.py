"""`python -m trials.train`: outputs, resume, spec adaptation, and every bad input as one error
line with exit code 2 (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import tiny_spec, write_cifar10, write_folder
from safetensors.torch import load_file, save_file

from nas.export import cli as export_cli
from nas.models.builder import build_model
from search_spaces import ArchSpec
from trials import train as cli
from trials.training import Trainer, load_checkpoint

FAST = ["--data", "digits", "--image-size", "8", "--train-fraction", "0.25", "--batch-size", "32",
        "--lr", "0.05", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(tiny_spec().to_json())
    return path


def _untimed(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    timed = ("epoch_seconds", "images_per_s")
    return [{k: v for k, v in r.items() if k not in timed} for r in rows]


def test_trains_writes_outputs_and_resumes_identically(
    tmp_path: Path, spec_file: Path, capsys, monkeypatch
) -> None:
    straight = tmp_path / "straight"
    assert cli.main(["--arch", str(spec_file), "--epochs", "2", "--out", str(straight), *FAST]) == 0
    out = capsys.readouterr().out
    assert "test top-1" in out and str(straight) in out
    assert {p.name for p in straight.iterdir()} >= {
        "spec.json", "checkpoint.pt", "metrics.jsonl", "result.json"
    }
    result = json.loads((straight / "result.json").read_text())
    assert result["epochs"] == 2 and result["state"] == "COMPLETE" and result["seconds"] > 0
    assert 0 <= result["val_top1"] <= 1 and 0 <= result["test_top1"] <= 1 and result["params"] > 0
    assert f"{result['test_top1']:.2%}" in out
    assert ArchSpec.from_json((straight / "spec.json").read_text()) == tiny_spec()
    curve = _untimed(straight / "metrics.jsonl")
    assert ([r["epoch"] for r in curve] == [1, 2] and "val_top1" in curve[0]
            and "train_loss" in curve[0])

    # Interrupt in epoch 2, then --resume: continues at epoch 2 and matches the straight run.
    resumed = tmp_path / "resumed"
    real = Trainer.train_epoch

    def interrupt_in_epoch_2(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_in_epoch_2)
    argv = ["--arch", str(spec_file), "--epochs", "2", "--out", str(resumed), *FAST]
    assert cli.main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert [r["epoch"] for r in _untimed(resumed / "metrics.jsonl")] == [1]
    assert cli.main(["--resume", "--out", str(resumed), "--quiet", "--threads", "1"]) == 0
    assert _untimed(resumed / "metrics.jsonl") == curve
    assert json.loads((resumed / "result.json").read_text())["test_top1"] == result["test_top1"]


def test_named_template_adapts_to_cifar_channels(tmp_path: Path, capsys) -> None:
    root = write_cifar10(tmp_path / "c10", per_batch=8, test=10)
    out = tmp_path / "run"
    argv = ["--arch", "resnest:17", "--data", f"cifar10:{root}", "--image-size", "8",
            "--epochs", "1", "--batch-size", "16", "--out", str(out), "--quiet", "--threads", "1"]
    assert cli.main(argv) == 0
    spec = ArchSpec.from_json((out / "spec.json").read_text())
    assert (spec.in_channels, spec.num_classes) == (3, 10)


def test_non_finite_loss_exits_1_with_reason(tmp_path: Path, spec_file: Path, capsys) -> None:
    out = tmp_path / "nan"
    argv = ["--arch", str(spec_file), "--epochs", "1", "--out", str(out), *FAST, "--lr", "1e6",
            "--grad-clip", "0", "--label-smoothing", "0"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training failed: non-finite training loss")
    assert json.loads((out / "result.json").read_text())["state"] == "FAIL"


def _bad(tmp_path: Path, spec_file: Path, case: str) -> tuple[list[str], str]:
    """argv and the expected fragment of the one error line, per bad-input case."""
    run = ["--arch", str(spec_file), "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet",
           "--threads", "1"]
    if case == "missing path":
        return ([*run, "--data", f"cifar10:{tmp_path / 'nope'}"],
                f"data path {tmp_path / 'nope'} does not exist")
    if case == "cifar layout":
        (tmp_path / "empty").mkdir()
        return ([*run, "--data", f"cifar10:{tmp_path / 'empty'}"],
                "is not a cifar10 python directory: missing data_batch_1")
    if case == "folder layout":
        (tmp_path / "flat").mkdir()
        return ([*run, "--data", f"folder:{tmp_path / 'flat'}"],
                "has no train/ directory; expected train/<class>/<image>")
    if case == "corrupt pickle":
        root = write_cifar10(tmp_path / "c10", per_batch=4, test=4)
        (root / "data_batch_5").write_bytes(b"garbage")
        # --adapt: the 1-channel spec fits the data, so the one error left is in the files
        return ([*run, "--adapt", "--data", f"cifar10:{root}"],
                f"{root / 'data_batch_5'} is not a readable CIFAR pickle")
    if case == "unreadable image":
        root = write_folder(tmp_path / "imgs")
        (root / "val" / "owl" / "x.jpg").write_bytes(b"\xff\xd8\xff nope")
        return ([*run, "--adapt", "--data", f"folder:{root}", "--image-size", "8"],
                f"cannot read image {root / 'val' / 'owl' / 'x.jpg'}")
    if case == "class mismatch":
        path = tmp_path / "five.json"
        path.write_text(tiny_spec(num_classes=5).to_json())
        return (["--arch", str(path), *run[2:], "--image-size", "8"],
                "has num_classes=5 but data fashion-mnist-subset needs num_classes=10")
    if case == "image too small":
        return [*run, "--image-size", "4"], "image size 4 is too small"
    if case == "unknown arch":
        return ["--arch", "resnest999", *run[2:]], "unknown named point 'resnest999'"
    if case == "missing spec file":
        return (["--arch", str(tmp_path / "no.json"), *run[2:]],
                f"spec file {tmp_path / 'no.json'} does not exist")
    if case == "unknown data":
        return [*run, "--data", "mnist"], "unknown data 'mnist'"
    if case == "no arch":
        return run[2:], "--arch is required"
    if case == "out is a file":
        (tmp_path / "file").write_text("x")
        out = str(tmp_path / "file" / "sub")
        return ([*run[:-5], "--out", out, "--quiet", "--image-size", "8"],
                "cannot write output directory")
    if case == "batch of one":
        return [*run, "--batch-size", "1"], "batch_size must be >= 2"
    if case == "train fraction":
        return [*run, "--train-fraction", "0"], "train fraction must be in (0, 1]"
    if case == "resume without run":
        return (["--resume", "--out", str(tmp_path)],
                f"--resume: {tmp_path} holds no checkpoint.pt")
    if case.startswith("init from"):
        return _bad_init(tmp_path, spec_file, case, run)
    if case == "corrupt checkpoint":
        (tmp_path / "checkpoint.pt").write_bytes(b"junk")
        return (["--resume", "--out", str(tmp_path)],
                f"{tmp_path / 'checkpoint.pt'} is not a readable checkpoint")
    raise AssertionError(case)


def _export_like(path: Path, spec: ArchSpec) -> Path:
    """Weights as `nas.export` writes them (the spec in the file's metadata), without training."""
    torch.manual_seed(0)
    save_file(build_model(spec).state_dict(), str(path), metadata={"spec": spec.to_json()})
    return path


def _bad_init(tmp_path: Path, spec_file: Path, case: str, run: list[str]) -> tuple[list[str], str]:
    none_of = "is none of: an export directory of python -m nas.export"
    if case == "init from an empty directory":
        (tmp_path / "empty").mkdir()
        return [*run[2:], "--init-from", str(tmp_path / "empty")], none_of
    if case == "init from a foreign file":
        (tmp_path / "w.bin").write_bytes(b"junk")
        return [*run[2:], "--init-from", str(tmp_path / "w.bin")], none_of
    if case == "init from a missing path":
        return ([*run[2:], "--init-from", str(tmp_path / "nope")],
                f"--init-from {tmp_path / 'nope'} does not exist")
    if case == "init from two exports":
        (tmp_path / "two").mkdir()
        for name in ("a", "b"):
            _export_like(tmp_path / "two" / f"{name}.safetensors", tiny_spec())
        return ([*run[2:], "--init-from", str(tmp_path / "two")],
                "holds 2 exports (a, b); pass one of its files")
    if case == "init from another architecture":
        source = _export_like(tmp_path / "w.safetensors", tiny_spec())
        other = tmp_path / "wide.json"
        other.write_text(tiny_spec().replace(stem_width=16).to_json())
        return (["--arch", str(other), *run[2:], "--init-from", str(source)],
                f"--init-from {source}: the weights do not fit architecture "
                f"{tiny_spec().replace(stem_width=16).tag}: tensor conv1.0.weight has shape "
                "(8, 1, 3, 3) in the weights but (16, 1, 3, 3) in this network")
    if case == "init from plain safetensors":
        save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
        return ([*run[2:], "--init-from", str(tmp_path / "plain.safetensors")],
                "names no architecture (no spec in its metadata)")
    if case == "init from with resume":
        return (["--resume", "--out", str(tmp_path), "--init-from", str(spec_file)],
                "--init-from starts a new run from other weights and --resume continues")
    raise AssertionError(case)


BAD_CASES = ["missing path", "cifar layout", "folder layout", "corrupt pickle", "unreadable image",
             "class mismatch", "image too small", "unknown arch", "missing spec file",
             "unknown data", "no arch", "out is a file", "batch of one", "train fraction",
             "resume without run", "corrupt checkpoint", "init from an empty directory",
             "init from a foreign file", "init from a missing path", "init from two exports",
             "init from another architecture", "init from plain safetensors",
             "init from with resume"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_error_line_exit_2(
    tmp_path: Path, spec_file: Path, case: str, capsys
) -> None:
    argv, expected = _bad(tmp_path, spec_file, case)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_existing_run_needs_resume_and_matching_options(
    tmp_path: Path, spec_file: Path, capsys
) -> None:
    out = tmp_path / "run"
    argv = ["--arch", str(spec_file), "--epochs", "1", "--out", str(out), *FAST]
    assert cli.main([*argv, "--train-fraction", "0.05"]) == 0
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert cli.main(["--resume", "--out", str(out), "--epochs", "3", "--quiet"]) == 2
    assert "epochs=3 differ from the run" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda(tmp_path: Path, spec_file: Path, capsys) -> None:
    argv = ["--arch", str(spec_file), "--out", str(tmp_path / "o"), "--device", "cuda", "--quiet"]
    assert cli.main(argv) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trials.train", "--arch", str(tmp_path / "x.json"),
                           "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: spec file {tmp_path / 'x.json'} does not exist"


def _starting_weights(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """Records the model's weights as the first epoch starts (what --init-from loaded)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = Trainer.train_epoch

    def record(self: Trainer) -> dict:
        if "start" not in seen:
            seen["start"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", record)
    return seen


def test_init_from_a_run_an_export_and_a_checkpoint_then_reexport(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Fine-tune chain: a run on 3 classes -> --init-from it on 10 classes (classifier replaced,
    every other tensor loaded) -> nas.export of that run -> --init-from the export directory and
    from the run's checkpoint file (same classes: every tensor loaded)."""
    folder = write_folder(tmp_path / "imgs")
    cifar = write_cifar10(tmp_path / "c10", per_batch=8, test=10)
    small = ["--image-size", "8", "--epochs", "1", "--batch-size", "8", "--quiet", "--threads", "1"]
    spec = tmp_path / "rgb3.json"
    spec.write_text(tiny_spec(num_classes=3, in_channels=3).to_json())
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["--arch", str(spec), "--data", f"folder:{folder}", "--out", str(first),
                     *small]) == 0
    trained = load_checkpoint(first)["model"]

    seen = _starting_weights(monkeypatch)
    assert cli.main(["--init-from", str(first), "--data", f"cifar10:{cifar}", "--out",
                     str(second), *small]) == 0
    err = capsys.readouterr().err
    assert f"starting from the weights of run {first / 'checkpoint.pt'}" in err
    assert "classifier replaced (3 -> 10 classes)" in err
    start = seen.pop("start")
    assert start.keys() == trained.keys()
    assert all(torch.equal(start[k], trained[k]) for k in trained if not k.startswith("fc."))
    assert start["fc.weight"].shape == (10, trained["fc.weight"].shape[1])
    result = json.loads((second / "result.json").read_text())
    assert result["init_from"] == str(first / "checkpoint.pt") and result["state"] == "COMPLETE"
    assert ArchSpec.from_json((second / "spec.json").read_text()) == tiny_spec(in_channels=3)

    exported = tmp_path / "exported"
    assert export_cli.main([str(second), "--out", str(exported), "--name", "tuned"]) == 0
    assert "exported run" in capsys.readouterr().out
    meta = json.loads((exported / "tuned.json").read_text())
    assert meta["trial"] is None and meta["experiment"] is None
    assert meta["run"]["state"] == "COMPLETE" and meta["run"]["checkpoint_epoch"] == 1
    assert meta["metrics"]["test_accuracy"] == result["test_top1"]
    assert meta["costs"]["params"] == result["params"]
    assert meta["verification"]["max_abs_diff"] <= 1e-5
    assert meta["preprocessing"]["image_size"] == 8 and meta["dataset"]["num_classes"] == 10
    weights = load_file(str(exported / "tuned.safetensors"))
    tuned = load_checkpoint(second)["model"]
    assert all(torch.equal(weights[k], tuned[k]) for k in tuned)

    for source, kind in ((exported, "export"), (second / "checkpoint.pt", "checkpoint")):
        out = tmp_path / f"from-{kind}"
        assert cli.main(["--init-from", str(source), "--data", f"cifar10:{cifar}", "--out",
                         str(out), *small]) == 0
        err = capsys.readouterr().err
        assert f"starting from the weights of {kind}" in err and "classifier replaced" not in err
        start = seen.pop("start")
        assert all(torch.equal(start[k], tuned[k]) for k in tuned)


def test_export_of_an_unfinished_run_needs_allow_partial(tmp_path: Path, spec_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys) -> None:
    run = tmp_path / "run"
    real = Trainer.train_epoch

    def stop_in_epoch_2(self: Trainer) -> dict:
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_2)
    assert cli.main(["--arch", str(spec_file), "--epochs", "2", "--out", str(run), *FAST]) == 130
    capsys.readouterr()
    out = tmp_path / "out"
    assert export_cli.main([str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run {run} stopped at epoch 1 of 2" in err
    assert not out.exists()
    assert export_cli.main([str(run), "--trial", "t0001", "--out", str(out)]) == 2
    assert "is a training run, not an experiment" in capsys.readouterr().err
    assert export_cli.main([str(run), "--out", str(out), "--allow-partial"]) == 0
    meta = json.loads(next(out.glob("*.json")).read_text())
    assert meta["run"]["partial"] is True and meta["run"]["epochs_planned"] == 2
    assert next(out.glob("*.py")).stem.endswith("_run")  # resnest_<tag>_<run directory name>


def test_init_from_a_search_trial_directory(small_experiment: Path) -> None:
    """A search trial's directory has the run layout: its checkpoint is a starting point."""
    trial_dir = small_experiment / "trials" / "t0001"
    source = cli.init_source(trial_dir)
    state = load_checkpoint(trial_dir)
    assert (source.kind, source.path) == ("run", trial_dir / "checkpoint.pt")
    assert source.spec == ArchSpec.from_dict(state["spec"])
    assert source.weights.keys() == state["model"].keys()
    with pytest.raises(cli.UserError, match="OUT/NAME/trials/<id>"):
        cli.init_source(small_experiment)  # the experiment itself is none of the kinds

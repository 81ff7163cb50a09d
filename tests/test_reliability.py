"""An experiment survives what users and machines do to it (issue 23).

Bad input to each of the five commands: one `error:` line, exit 2, no traceback, and for
`nas.search` nothing written. One driver per experiment (a lock naming the running driver, taken
over once its driver died). `--resume` re-runs interrupted architectures without counting them
against `--trials`, says so when nothing is left, and refuses settings that would change the
search. trials.csv and the study are cross-checked and rebuilt from each other where they can
be; a study that stops accepting writes ends the search with nothing lost. Files are complete in
the files the README names and readable by the group as the umask allows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from data_fixtures import tiny_spec
from test_search_cli import _controller_for

from analysis import pareto as analysis_cli
from nas import costs as costs_cli
from nas.experiment import (
    ExperimentConfig,
    ExperimentDir,
    TrialRecord,
    close_storage,
    driver_lock,
    open_storage,
    read_trials_csv,
    write_trials_csv,
)
from nas.export import cli as export_cli
from nas.search import cli as search_cli
from nas.search.objectives import parse_objectives
from nas.search.recovery import INTERRUPTED, is_interrupted
from search_spaces import get_space
from search_spaces.errors import UserError
from trials import train as train_cli


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def call(main: Callable[[list[str]], int], argv: list[str],
         capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """A command's exit code, stdout and stderr, run in-process (argparse exits too)."""
    capsys.readouterr()  # what came before is not the command's
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, message: str, rc: int = 2) -> None:
    assert code == rc, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "usage:" not in err, err
    assert message in err, err


# Experiments the table's cases point at -----------------------------------------------------
def fake_experiment(root: Path, name: str = "fake", objectives: tuple[str, ...] = (
        "accuracy", "macs")) -> Path:
    """experiment.json and trials.csv of three trials (nothing trained): what analysis and the
    export read before they look for checkpoints."""
    exp = root / name
    exp.mkdir(parents=True)
    config = ExperimentConfig(name=name, space="resnest", preset="small", data="digits",
                              image_size=8, objectives=objectives, epochs=2, trials=3,
                              time_budget_s=60.0, sampler="tpe", pruner="none", seed=0,
                              storage="")
    ExperimentDir(exp).config.write_text(config.to_json())
    spec = tiny_spec()
    curve = ({"epoch": 1, "val_top1": 0.5}, {"epoch": 2, "val_top1": 0.7})
    write_trials_csv(exp, [
        TrialRecord("t0000", 0, "COMPLETE", spec, {"params": 1e4, "macs": 1e6}, curve),
        TrialRecord("t0001", 1, "COMPLETE", spec.replace(stem_width=16),
                    {"params": 2e4, "macs": 2e6}, curve[:1] + ({"epoch": 2, "val_top1": 0.8},)),
        TrialRecord("t0002", 2, "FAIL", spec.replace(base_planes=32),
                    {"params": 3e4, "macs": 3e6}, reason="non-finite loss"),
    ])
    return exp


def spoil_csv(exp: Path, how: str) -> None:
    path = ExperimentDir(exp).trials_csv
    lines = path.read_bytes().split(b"\r\n")
    if how == "bad bytes":
        lines[2] = lines[2][:40] + b"\xff\xfe" + lines[2][40:]
    elif how == "unknown state":
        lines[2] = lines[2].replace(b",COMPLETE,", b",DONE,", 1)
    elif how == "torn row":
        lines[2] = lines[2][:30]
    elif how == "repeated trial":
        lines.insert(2, lines[1])
    elif how == "missing column":
        lines = [b",".join(line.split(b",")[1:]) for line in lines]
    path.write_bytes(b"\r\n".join(lines))


CSV_DAMAGES = ("bad bytes", "unknown state", "torn row", "repeated trial", "missing column")


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    """Paths the bad-input cases name: {OUT} (holding experiment `old` with a malformed
    experiment.json), {EXP} (a readable experiment), {EXP2} (other objectives), {BADCSV}, a
    {FILE}, an {EMPTY} directory and {MISSING}, a path that does not exist."""
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    (out / "old" / "experiment.json").write_text('{"name": "old"}')
    exp = fake_experiment(tmp_path / "exps")
    other = fake_experiment(tmp_path / "exps", "other", ("accuracy", "params"))
    bad = fake_experiment(tmp_path / "exps", "badcsv")
    spoil_csv(bad, "unknown state")
    damaged = fake_experiment(tmp_path / "exps", "damaged")
    ExperimentDir(damaged).study.write_bytes(bytes(range(256)))
    (tmp_path / "file.txt").write_text("not a directory\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"stages": [')
    (tmp_path / "invalid.json").write_text(json.dumps({
        **json.loads(tiny_spec().to_json()), "stem": "wide"}))
    return {"OUT": out, "EXP": exp, "EXP2": other, "BADCSV": bad, "DAMAGED": damaged,
            "FILE": tmp_path / "file.txt", "EMPTY": tmp_path / "empty",
            "MISSING": tmp_path / "missing", "BADJSON": tmp_path / "bad.json",
            "INVALIDSPEC": tmp_path / "invalid.json", "TMP": tmp_path}


def fill(argv: list[str], place: dict[str, Path]) -> list[str]:
    out = []
    for arg in argv:
        for key, path in place.items():
            arg = arg.replace("{" + key + "}", str(path))
        out.append(arg)
    return out


# The table: (command, class, argv, message) -----------------------------------------------------
SEARCH = [  # each run with --out {OUT} --smoke
    ("argparse", ["--trials", "many"], "argument --trials: invalid int value: 'many'"),
    ("argparse", ["--epochs", "2.5"], "argument --epochs: invalid int value"),
    ("argparse", ["--seed", "x"], "argument --seed: invalid int value"),
    ("argparse", ["--concurrency", "1.5"], "argument --concurrency: invalid int value"),
    ("argparse", ["--image-size", "big"], "argument --image-size: invalid int value"),
    ("argparse", ["--max-failures", "two"], "argument --max-failures: invalid int value"),
    ("argparse", ["--batch-size", "1e2"], "argument --batch-size: invalid int value"),
    ("argparse", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ("argparse", ["--cpus-per-trial", "one"], "argument --cpus-per-trial: invalid float"),
    ("argparse", ["--trials"], "argument --trials: expected one argument"),
    ("argparse", ["--storage"], "argument --storage: expected one argument"),
    ("argparse", ["--bogus"], "unrecognized arguments: --bogus"),
    ("argparse", ["stray"], "unrecognized arguments: stray"),
    ("argparse", ["--max", "1"], "ambiguous option: --max"),
    ("argparse", ["--smoke=yes"], "argument --smoke: ignored explicit argument 'yes'"),
    ("non-finite", ["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    ("non-finite", ["--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
    ("non-finite", ["--max-macs", "inf"], "argument --max-macs: must be a finite number"),
    ("non-finite", ["--max-params", "NaN"], "argument --max-params: must be a finite number"),
    ("non-finite", ["--max-latency-ms=-inf"], "argument --max-latency-ms: must be a finite"),
    ("non-finite", ["--cpus-per-trial", "nan"], "argument --cpus-per-trial: must be a finite"),
    ("non-finite", ["--gpus-per-trial", "inf"], "argument --gpus-per-trial: must be a finite"),
    ("non-finite", ["--time-budget", "nan"], "--time-budget must look like 90s, 10m or 1h"),
    ("non-finite", ["--time-budget", "inf"], "--time-budget must look like 90s, 10m or 1h"),
    ("range", ["--lr", "0"], "--lr must be positive, got 0"),
    ("range", ["--lr", "-0.1"], "--lr must be positive, got -0.1"),
    ("range", ["--batch-size", "0"], "--batch-size must be positive, got 0"),
    ("range", ["--concurrency", "0"], "--concurrency must be positive, got 0"),
    ("range", ["--max-failures", "-1"], "--max-failures must be >= 0, got -1"),
    ("range", ["--image-size", "0"], "--image-size must be positive, got 0"),
    ("range", ["--max-latency-ms", "0"], "--max-latency-ms must be positive"),
    ("range", ["--max-params", "-1"], "--max-params must be positive"),
    ("range", ["--trials", "-3"], "--trials must be positive, got -3"),
    ("range", ["--time-budget=-5m"], "--time-budget must look like 90s, 10m or 1h"),
    ("range", ["--time-budget", "-5m"], "argument --time-budget: expected one argument"),
    ("range", ["--time-budget", "5d"], "--time-budget must look like 90s, 10m or 1h"),
    ("range", ["--time-budget", "0s"], "--time-budget must be positive"),
    ("resources", ["--cpus-per-trial", "64"],
     "--cpus-per-trial 64 asks for more CPUs per trial than this machine has"),
    ("resources", ["--cpus-per-trial", "1e6"], "asks for more CPUs per trial than this machine"),
    ("resources", ["--gpus-per-trial", "0.5", "--cpus-per-trial", "64"], "asks for more"),
    ("storage", ["--storage", "foo://bar"], "--storage foo://bar is not a readable Optuna"),
    ("storage", ["--storage", "study.db"], "--storage must be a database URL"),
    ("storage", ["--storage", "{TMP}/s.journal"], "--storage must be a database URL"),
    ("storage", ["--storage", "sqlite:///{MISSING}/dir/s.db"], "--storage sqlite:///"),
    ("storage", ["--storage", "postgresql://u@127.0.0.1:1/db"], "--storage postgresql://"),
    ("storage", ["--storage", "mysql://u@127.0.0.1:1/db"], "--storage mysql://"),
    ("storage", ["--storage", "sqlite:///{FILE}"], "is not a readable Optuna database"),
    ("names", ["--name", ""], "--name must be a plain directory name"),
    ("names", ["--name", "a/b"], "--name must be a plain directory name, got 'a/b'"),
    ("names", ["--name", ".."], "--name must be a plain directory name"),
    ("names", ["--out", "{FILE}"], "is not writable"),
    ("names", ["--name", "old", "--resume"], "is unreadable or malformed"),
    ("names", ["--name", "fresh", "--resume"], "is not an experiment (no experiment.json)"),
    ("choices", ["--seed-points", "resnest14d,nope"], "unknown named point 'nope'"),
    ("choices", ["--objectives", ""], "objectives must include accuracy"),
    ("choices", ["--objectives", "Accuracy,macs"], "unknown objective 'Accuracy'"),
    ("choices", ["--sampler", ""], "unknown sampler ''"),
    ("choices", ["--pruner", "MEDIAN"], "unknown pruner 'MEDIAN'"),
    ("choices", ["--space", ""], "unknown space ''"),
    ("choices", ["--preset", "tiny"], "unknown preset 'tiny'"),
    ("choices", ["--pruner", "hyperband"], "pruner hyperband ranks one objective"),
    ("data", ["--data", "folder:{MISSING}"], "data path {MISSING} does not exist"),
    ("data", ["--data", "cifar100:{MISSING}"], "data path {MISSING} does not exist"),
    ("data", ["--data", "cifar10:{FILE}"], "data path {FILE} is not a directory"),
    ("data", ["--data", "folder:{EMPTY}"], "{EMPTY} has no train/ directory"),
    ("data", ["--data", ""], "unknown data ''; expected one of: fashion-mnist-subset | "),
    ("data", ["--data", "mnist"], "unknown data 'mnist'"),
    ("data", ["--image-size", "2"], "too small"),
]
ANALYSIS = [
    ("argparse", [], "the following arguments are required: EXP"),
    ("argparse", ["{EXP}", "--csv", "--json"], "argument --json: not allowed with argument"),
    ("argparse", ["{EXP}", "--objectives"], "argument --objectives: expected one argument"),
    ("argparse", ["{EXP}", "--bogus"], "unrecognized arguments: --bogus"),
    ("argparse", ["{EXP}", "--all=1"], "ignored explicit argument"),
    ("paths", ["{MISSING}"], "does not exist"),
    ("paths", ["{EMPTY}"], "is not an experiment: no experiment.json in it"),
    ("paths", ["{FILE}"], "is not an experiment"),
    ("paths", ["{OUT}/old"], "is unreadable or malformed"),
    ("paths", ["{EXP}", "{MISSING}"], "does not exist"),
    ("records", ["{BADCSV}"], "trials.csv line 3 is not a trial record: state must be one of"),
    ("choices", ["{EXP}", "--objectives", "accuracy,flops"], "unknown objective 'flops'"),
    ("choices", ["{EXP}", "--objectives", "macs"], "objectives must include accuracy"),
    ("choices", ["{EXP}", "--objectives", "accuracy,latency"], "latency has no values"),
    ("choices", ["{EXP}", "{EXP2}"], "the experiments optimized different objectives"),
    ("outputs", ["{EXP}", "--plot", "{MISSING}/f.png"], "does not exist"),
    ("outputs", ["{EXP}", "--plot", "{EMPTY}"], "is a directory; give a file name"),
    ("outputs", ["{EXP}", "--html", "{MISSING}/f.html"], "does not exist"),
    ("outputs", ["{EXP}", "--json", "--importance"], "--importance prints tables"),
    ("storage", ["{EXP}", "--importance"], "has no study.journal"),
    ("storage", ["{DAMAGED}", "--importance"], "is not a readable Optuna journal"),
]
EXPORT = [
    ("argparse", [], "the following arguments are required"),
    ("argparse", ["{EXP}", "--out", "{TMP}/x"], "one of the arguments --trial --pick is required"),
    ("argparse", ["{EXP}", "--pick", "best", "--out", "{TMP}/x"], "invalid choice: 'best'"),
    ("argparse", ["{EXP}", "--trial", "t0000", "--pick", "knee", "--out", "{TMP}/x"],
     "not allowed with argument"),
    ("argparse", ["{EXP}", "--pick", "knee"], "the following arguments are required: --out"),
    ("argparse", ["{EXP}", "--pick", "knee", "--out"], "argument --out: expected one argument"),
    ("argparse", ["{EXP}", "--pick", "knee", "--out", "{TMP}/x", "--max-params", "x"],
     "argument --max-params: invalid float value: 'x'"),
    ("non-finite", ["{EXP}", "--pick", "knee", "--out", "{TMP}/x", "--max-macs", "nan"],
     "argument --max-macs: must be a finite number"),
    ("non-finite", ["{EXP}", "--pick", "knee", "--out", "{TMP}/x", "--min-accuracy", "inf"],
     "argument --min-accuracy: must be a finite number"),
    ("non-finite", ["{EXP}", "--pick", "knee", "--out", "{TMP}/x", "--max-latency-ms=-inf"],
     "argument --max-latency-ms: must be a finite number"),
    ("choices", ["{EXP}", "--trial", "t0000", "--max-macs", "1e6", "--out", "{TMP}/x"],
     "they do not apply to --trial"),
    ("choices", ["{EXP}", "--pick", "knee", "--out", "{TMP}/x", "--name", "1bad"],
     "--name must be a Python identifier"),
    ("choices", ["{EXP}", "--pick", "knee", "--out", "{TMP}/x", "--objectives", "accuracy,x"],
     "unknown objective 'x'"),
    ("paths", ["{MISSING}", "--pick", "knee", "--out", "{TMP}/x"], "does not exist"),
    ("paths", ["{EMPTY}", "--pick", "knee", "--out", "{TMP}/x"], "is not an experiment"),
    ("records", ["{BADCSV}", "--pick", "knee", "--out", "{TMP}/x"],
     "trials.csv line 3 is not a trial record"),
    ("records", ["{EXP}", "--trial", "t0099", "--out", "{TMP}/x"], "unknown trial id 't0099'"),
    ("records", ["{EXP}", "--trial", "t0002", "--out", "{TMP}/x"], "trial t0002 is FAIL"),
    ("records", ["{EXP}", "--pick", "accuracy", "--max-macs", "10", "--out", "{TMP}/x"],
     "no completed trial satisfies --max-macs 10"),
]
TRAIN_FAST = ["--arch", "resnest:0", "--epochs", "1", "--image-size", "8", "--train-fraction",
              "0.05", "--quiet", "--threads", "1"]
TRAIN = [  # each run with TRAIN_FAST (a one-epoch run, were a case ever accepted) and --out
    ("argparse", ["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    ("argparse", ["--optimizer", "lion"], "argument --optimizer: invalid choice: 'lion'"),
    ("argparse", ["--epochs"], "argument --epochs: expected one argument"),
    ("argparse", ["--bogus"], "unrecognized arguments: --bogus"),
    ("argparse", ["--threads", "1.5"], "argument --threads: invalid int value"),
    ("argparse", ["--batch-size", "big"], "argument --batch-size: invalid int value"),
    ("non-finite", ["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    ("non-finite", ["--weight-decay", "inf"], "argument --weight-decay: must be a finite"),
    ("non-finite", ["--momentum", "nan"], "argument --momentum: must be a finite number"),
    ("non-finite", ["--label-smoothing=-inf"], "argument --label-smoothing: must be a"),
    ("non-finite", ["--warmup-epochs", "nan"], "argument --warmup-epochs: must be a finite"),
    ("non-finite", ["--grad-clip", "inf"], "argument --grad-clip: must be a finite number"),
    ("non-finite", ["--val-fraction", "nan"], "argument --val-fraction: must be a finite"),
    ("non-finite", ["--train-fraction", "inf"], "argument --train-fraction: must be a finite"),
    ("range", ["--epochs", "0"], "epochs must be a positive integer, got 0"),
    ("range", ["--lr", "-1"], "lr must be a finite number >= 0, got -1.0"),
    ("range", ["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    ("range", ["--val-fraction", "1.5"], "val fraction must be in (0, 1), got 1.5"),
    ("range", ["--train-fraction", "0"], "train fraction must be in (0, 1], got 0.0"),
    ("range", ["--label-smoothing", "1.5"], "label_smoothing must be < 1, got 1.5"),
    ("range", ["--image-size", "0"], "image size must be an integer >= 2, got 0"),
    ("choices", ["--arch", "nope"], "unknown named point 'nope'"),
    ("choices", ["--arch", "{BADJSON}"], "{BADJSON}: not valid JSON"),
    ("choices", ["--arch", "{INVALIDSPEC}"], "stem must be one of deep, plain, got 'wide'"),
    ("choices", ["--device", "tpu"], "device must be auto, cpu or cuda[:N], got 'tpu'"),
    ("data", ["--data", "cifar10:{MISSING}"], "data path {MISSING} does not exist"),
    ("data", ["--data", "folder:{EMPTY}"], "{EMPTY} has no train/ directory"),
    ("paths", ["--resume"], "holds no checkpoint.pt to continue"),
]
COSTS = [
    ("argparse", [], "the following arguments are required: arch"),
    ("argparse", ["resnest14d", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ("argparse", ["resnest14d", "--image-size", "x"], "argument --image-size: invalid int"),
    ("argparse", ["resnest14d", "--batch-size", "1.5"], "argument --batch-size: invalid int"),
    ("argparse", ["resnest14d", "--bogus"], "unrecognized arguments: --bogus"),
    ("argparse", ["resnest14d", "extra"], "unrecognized arguments: extra"),
    ("choices", ["nope"], "unknown named point 'nope'"),
    ("choices", ["{BADJSON}"], "{BADJSON}: not valid JSON"),
    ("choices", ["{INVALIDSPEC}"], "stem must be one of deep, plain, got 'wide'"),
    ("choices", ["{MISSING}.json"], "spec file {MISSING}.json does not exist"),
    ("choices", ['{"stages": 3}'], "spec.stages must be a list, got int"),
    ("range", ["resnest14d", "--image-size", "0"], "image size 0 is below this spec's minimum"),
    ("range", ["resnest14d", "--image-size", "-8"], "image size -8 is below this spec's"),
    ("range", ["resnest14d", "--batch-size", "0"], "batch size must be >= 2"),
]
CASES = ([("nas.search", *c) for c in SEARCH] + [("analysis.pareto", *c) for c in ANALYSIS]
         + [("nas.export", *c) for c in EXPORT] + [("trials.train", *c) for c in TRAIN]
         + [("nas.costs", *c) for c in COSTS])
MAINS = {"nas.search": search_cli.main, "analysis.pareto": analysis_cli.main,
         "nas.export": export_cli.main, "trials.train": train_cli.main,
         "nas.costs": costs_cli.main}


@pytest.mark.parametrize(("command", "kind", "argv", "message"), CASES,
                         ids=[f"{c[0]}-{c[1]}:{' '.join(c[2])}" for c in CASES])
def test_bad_input_is_one_error_line(command: str, kind: str, argv: list[str], message: str,
                                     place: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Every bad input: one `error:` line, exit 2, no traceback; nas.search writes nothing."""
    monkeypatch.chdir(place["TMP"])
    argv = fill(argv, place)
    if command == "nas.search":
        argv = ["--out", str(place["OUT"]), "--smoke", *argv]
    elif command == "trials.train":
        argv = [*TRAIN_FAST, "--out", str(place["TMP"] / "run"), *argv]
    elif command == "nas.costs" and argv:
        argv = [*argv, "--no-latency"] if "extra" not in argv else argv
    before = snapshot(place["TMP"])
    code, out, err = call(MAINS[command], argv, capsys)
    assert_one_error_line(code, err, fill([message], place)[0])
    if command == "nas.search":
        assert snapshot(place["TMP"]) == before
        assert sorted(p.name for p in place["OUT"].iterdir()) == ["old"]


def test_the_table_covers_every_command_with_enough_cases() -> None:
    assert len(CASES) >= 120 and set(MAINS) == {c[0] for c in CASES}


# 1. One driver per experiment ------------------------------------------------------------------
def stored_experiment(out: Path, outcomes: str = "cc", *flags: str) -> Path:
    """OUT/resnest as `nas.search --trials N` leaves it after trials driven without Ray (one
    letter per trial, see `_drive`): experiment.json, trials.csv, study.journal, metrics."""
    exp = out / "resnest"
    exp.mkdir(parents=True)
    ctrl, config = _controller_for(exp, "--epochs", "2", "--pruner", "none",
                                   "--trials", str(len(outcomes)), *flags)
    drive(ctrl, outcomes)
    ExperimentDir(exp).config.write_text(config.to_json())
    return exp


def drive(ctrl, outcomes: str) -> list[str]:
    """Like `_drive`, and each trial writes its run directory's metrics as a real one does."""
    ids = []
    for index, outcome in enumerate(outcomes):
        proposal = ctrl.next_trial()
        assert proposal is not None
        trial_id = proposal[0]
        ids.append(trial_id)
        epochs = ctrl.config.epochs if outcome == "c" else 1
        curve = []
        for epoch in range(1, epochs + 1):
            result = {"epoch": epoch, "val_top1": 0.1 * (index + epoch), "train_loss": 1.0,
                      "lr": 0.01}
            curve.append(result)
            run = ExperimentDir(ctrl.exp).trial(trial_id)
            run.path.mkdir(parents=True, exist_ok=True)
            run.metrics.write_text("".join(json.dumps(r) + "\n" for r in curve))
            ctrl.on_result(trial_id, result)
        if outcome == "f":
            ctrl.on_complete(trial_id, {"epoch": 1, "failed": "non-finite loss"})
        elif outcome == "p":
            ctrl.pruned[trial_id] = "pruned at epoch 1 by test"
            ctrl.on_complete(trial_id, {"time_total_s": 2.5})
        elif outcome == "c":
            ctrl.on_complete(trial_id, {"time_total_s": 4.0})
    return ids


def resume(exp: Path):
    """The controller `--resume` builds on `exp` (no Ray)."""
    config = ExperimentConfig.from_json(ExperimentDir(exp).config.read_text())
    objectives = parse_objectives(list(config.objectives))
    study = search_cli.open_study(config, exp, objectives, True)
    return search_cli.make_controller(config, exp, study, get_space(config.space), objectives,
                                      search_cli.cost_function(config), True)


def test_a_second_driver_is_refused_naming_the_running_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out")
    before = snapshot(exp)
    with driver_lock(exp):
        who = f"pid {os.getpid()} on host {socket.gethostname()}"
        code, _, err = call(search_cli.main, ["--out", exp.parent, "--resume"], capsys)
        assert_one_error_line(code, err, f"is being searched by another driver ({who}")
        code, _, err = call(search_cli.main, ["--out", exp.parent, "--smoke"], capsys)
        assert_one_error_line(code, err, f"already exists and is being searched by another "
                                         f"driver ({who}")
    assert {k: v for k, v in snapshot(exp).items() if not k.endswith("driver.lock")} == before


def test_the_lock_of_a_driver_killed_with_9_is_taken_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The driver dies mid-append, holding Optuna's journal lock too (a symlink to the journal's
    path as the driver named it, relative here): the next driver takes both over."""
    exp = stored_experiment(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from nas.experiment import driver_lock\n"
        "from optuna.storages.journal import JournalFileSymlinkLock\n"
        "with driver_lock(Path(sys.argv[1])):\n"
        "    JournalFileSymlinkLock(sys.argv[2]).acquire()\n"
        "    print('held', flush=True); time.sleep(600)"),
        str(exp), "out/resnest/study.journal"], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    journal_lock = Path(f"{ExperimentDir(exp).study}.lock")
    try:
        assert holder.stdout.readline().strip() == "held"
        assert os.path.lexists(journal_lock)
        code, _, err = call(search_cli.main, ["--out", exp.parent, "--resume"], capsys)
        assert_one_error_line(code, err, f"another driver (pid {holder.pid} on host")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, out, err = call(search_cli.main, ["--out", exp.parent, "--resume"], capsys)
    assert code == 0 and out.startswith("nothing left to run"), err
    [note] = err.splitlines()
    assert note.startswith(f"note: took over {ExperimentDir(exp).lock} from a driver that is "
                           f"gone (pid {holder.pid} on host {socket.gethostname()}, started ")
    assert note.endswith("; released the study journal's lock it held)")
    assert not os.path.lexists(journal_lock)
    assert ExperimentDir(exp).lock.read_text() == ""  # released: a copy names no driver


# 2. --resume keeps its word --------------------------------------------------------------------
def finish(ctrl) -> None:
    """Run the search to its end without Ray: every proposal trains its epochs and completes."""
    while (proposal := ctrl.next_trial()) is not None:
        for epoch in range(1, ctrl.config.epochs + 1):
            ctrl.on_result(proposal[0], {"epoch": epoch, "val_top1": 0.5, "train_loss": 1.0})
        ctrl.on_complete(proposal[0], None)


def test_every_started_architecture_is_evaluated_however_often_the_driver_dies(
        tmp_path: Path) -> None:
    """Kill after kill, each leaving trials running (re-runs of interrupted ones among them):
    the budget counts architectures, and every architecture the search started is evaluated."""
    exp = stored_experiment(tmp_path / "out", "cr", "--trials", "5")
    for outcomes in ("rr", "cr", "r", ""):
        drive(resume(exp), outcomes)  # then the driver dies: nothing is closed
    ctrl = resume(exp)
    finish(ctrl)
    records = list(ctrl.records.values())
    finished = [r for r in records if not is_interrupted(r)]
    assert len(records) > 5 and len(finished) == ctrl.launched == 5
    assert all(r.state == "COMPLETE" for r in finished) and not ctrl.live
    assert {r.spec for r in records} == {r.spec for r in finished}


def test_interrupted_trials_run_first_and_do_not_count_against_the_budget(
        tmp_path: Path) -> None:
    exp = stored_experiment(tmp_path / "out", "crr", "--trials", "3")
    ctrl = resume(exp)
    interrupted = [r for r in ctrl.records.values() if is_interrupted(r)]
    assert [r.reason.startswith(INTERRUPTED) for r in interrupted] == [True, True]
    assert ctrl.launched == 1 and ctrl.reruns == 2 and ctrl.budget_left()
    first, second = ctrl.next_trial(), ctrl.next_trial()
    assert [ctrl.records[t].spec for t, _ in (first, second)] == [r.spec for r in interrupted]
    assert ctrl.next_trial() is None  # 3 architectures: the budget is spent


def test_a_resume_with_nothing_left_says_so_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out", "cc")
    before = snapshot(exp)
    code, out, err = call(search_cli.main, ["--out", exp.parent, "--resume"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"nothing left to run: {exp} has started 2 of 2 architectures "
                                "and none waits to run again; pass a larger --trials to search "
                                "further"]
    assert {k: v for k, v in snapshot(exp).items() if not k.endswith("driver.lock")} == before


RESUME_CONFLICTS = [
    (["--epochs", "3"], "--epochs gives 3, the experiment has 2"),
    (["--objectives", "accuracy"], "--objectives gives accuracy, the experiment has accuracy,macs"),
    (["--sampler", "nsga2"], "--sampler gives nsga2, the experiment has tpe"),
    (["--pruner", "pareto"], "--pruner gives pareto, the experiment has none"),
    (["--space", "resnest-imagenet"], "--space gives preset imagenet, the experiment has preset"),
    (["--preset", "imagenet"], "--preset gives preset imagenet"),
    (["--data", "cifar10:/data"],
     "--data gives cifar10:/data, the experiment has fashion-mnist-subset"),
    (["--image-size", "16"], "--image-size gives 16, the experiment has 8"),
    (["--train-fraction", "0.5"], "--train-fraction gives 0.5, the experiment has 0.25"),
    (["--seed", "1"], "--seed gives 1, the experiment has 0"),
    (["--storage", "sqlite:///x.db"], "--storage gives sqlite:///x.db, the experiment has (the"),
    (["--max-macs", "1e7"], "--max-macs gives 10000000.0, the experiment has None"),
    (["--seed-points", "resnest14d"], "--seed-points gives resnest14d, the experiment has (none)"),
    (["--no-anchor"], "--anchor gives none, the experiment has families"),
    (["--anchor", "cheapest"], "--anchor gives cheapest, the experiment has families"),
    (["--batch-size", "32"], "--batch-size gives 32, the experiment has 64"),
    (["--lr", "0.5"], "--lr gives 0.5, the experiment has None"),
    (["--smoke", "--epochs", "2", "--image-size", "16"], "--image-size gives 16"),
    (["--epochs", "3", "--sampler", "random"], "--epochs gives 3, the experiment has 2; --sampler"),
]


@pytest.mark.parametrize(("flags", "message"), RESUME_CONFLICTS,
                         ids=[" ".join(f) for f, _ in RESUME_CONFLICTS])
def test_resume_refuses_settings_that_would_change_the_search(
        tmp_path: Path, flags: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out", "cc")
    before = snapshot(tmp_path)
    code, _, err = call(search_cli.main, ["--out", exp.parent, "--resume", *flags], capsys)
    assert_one_error_line(code, err, message)
    assert "only --trials and --time-budget may change on resume" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags", [["--epochs", "2", "--pruner", "none"], ["--smoke"],
                                   ["--trials", "2", "--time-budget", "1h"], ["--trials", "1"]])
def test_resume_accepts_the_same_settings_and_new_budgets(
        tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out", "cc")
    code, out, err = call(search_cli.main, ["--out", exp.parent, "--resume", *flags], capsys)
    assert code == 0 and out.startswith("nothing left to run"), err


# 3. The records agree or the search says why ---------------------------------------------------
@pytest.mark.parametrize("objectives", ["accuracy,macs", "accuracy"])
def test_a_missing_trials_csv_is_rebuilt_from_the_study_exactly(
        tmp_path: Path, objectives: str, capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out", "cpfc", "--objectives", objectives)
    before = read_trials_csv(exp)
    ExperimentDir(exp).trials_csv.unlink()
    code, out, err = call(search_cli.main, ["--out", exp.parent, "--resume"], capsys)
    assert code == 0 and out.startswith("nothing left to run")
    assert err.splitlines() == [f"note: rebuilt 4 row(s) of {ExperimentDir(exp).trials_csv} "
                                f"from the study {ExperimentDir(exp).study}"]
    assert read_trials_csv(exp) == before


def test_a_trial_the_study_finished_but_trials_csv_missed_is_rebuilt(tmp_path: Path) -> None:
    """The driver died between telling the study and rewriting trials.csv."""
    exp = stored_experiment(tmp_path / "out", "cc", "--trials", "3")
    stale = read_trials_csv(exp)
    ctrl = resume(exp)
    drive(ctrl, "c")
    finished = read_trials_csv(exp)
    write_trials_csv(exp, stale + [dataclasses.replace(finished[-1], state="RUNNING", curve=(),
                                                       seconds=0.0, checkpoint=None)])
    assert read_trials_csv(resume(exp).exp) == finished


@pytest.mark.parametrize("how", CSV_DAMAGES)
def test_a_damaged_trials_csv_names_the_file_and_line(
        tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out", "cc")
    spoil_csv(exp, how)
    with pytest.raises(UserError) as refused:
        read_trials_csv(exp)
    assert str(refused.value).startswith(f"{ExperimentDir(exp).trials_csv} line ")
    before = snapshot(tmp_path)
    for main, argv in ((search_cli.main, ["--out", exp.parent, "--resume"]),
                       (analysis_cli.main, [exp])):
        code, _, err = call(main, argv, capsys)
        assert_one_error_line(code, err, f"{ExperimentDir(exp).trials_csv} line ")
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.endswith("driver.lock")} == {
        k: v for k, v in before.items() if not k.endswith("driver.lock")}


@pytest.mark.parametrize("swap", ["fewer trials", "other architectures", "missing", "empty"])
def test_a_study_that_is_not_the_experiments_is_refused(
        tmp_path: Path, swap: str, capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "a", "ccc")
    journal = ExperimentDir(exp).study
    if swap == "missing":
        journal.unlink()
    elif swap == "empty":
        journal.write_bytes(b"")
    else:
        other = stored_experiment(tmp_path / "b", "c" if swap == "fewer trials" else "ccc",
                                  "--seed", "7", "--no-anchor")
        shutil.copy(ExperimentDir(other).study, journal)
    before = snapshot(tmp_path / "a")
    code, _, err = call(search_cli.main, ["--out", exp.parent, "--resume"], capsys)
    message = {"missing": "has no study.journal", "empty": "holds no study named 'resnest'",
               "other architectures": "disagree on the architecture of t0000"}.get(
        swap, "holds trials the study")
    assert_one_error_line(code, err, message)
    after = snapshot(tmp_path / "a")
    assert {k: v for k, v in after.items() if not k.endswith("driver.lock")} == before


def test_a_study_that_stops_accepting_writes_ends_the_search_and_loses_nothing(
        tmp_path: Path) -> None:
    """Mid-search the journal cannot be written: the trial finishing then is kept in
    trials.csv, the one still training is stopped as interrupted, nothing new starts; once the
    file is back, --resume tells the study what it missed and re-runs the interrupted one."""
    exp = stored_experiment(tmp_path / "out", "c", "--trials", "4")
    ctrl = resume(exp)
    (done, _), (cut, _) = ctrl.next_trial(), ctrl.next_trial()
    for epoch in (1, 2):
        assert not ctrl.on_result(done, {"epoch": epoch, "val_top1": 0.4 + epoch / 10})
    assert not ctrl.on_result(cut, {"epoch": 1, "val_top1": 0.3})
    journal = ExperimentDir(exp).study
    journal.rename(tmp_path / "saved")
    journal.mkdir()  # writing the journal now fails as a full or read-only disk would
    ctrl.on_complete(done, {"time_total_s": 3.0})
    assert ctrl.failure and str(journal) in ctrl.failure and "\n" not in ctrl.failure
    assert ctrl.next_trial() is None and ctrl.stopped
    assert ctrl.on_result(cut, {"epoch": 1, "val_top1": 0.3})  # reported again: stop it
    ctrl.close_live("stopped at the end of the search")
    finished = read_trials_csv(exp)
    assert [r.state for r in finished] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert is_interrupted(finished[2])
    journal.rmdir()
    (tmp_path / "saved").rename(journal)
    again = resume(exp)  # the study is told what it missed
    assert read_trials_csv(exp) == finished and again.launched == 2 and again.reruns == 1
    study = again.study.trials
    assert [t.state.name for t in study[:3]] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study[1].values == [finished[1].accuracy, finished[1].costs["macs"]]
    trial_id, _ = again.next_trial()
    assert again.records[trial_id].spec == finished[2].spec


def test_a_new_experiment_that_fails_to_start_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until experiment.json is written, a failure removes the directory the driver made, so
    the same command (and no stray --resume) can run again."""
    from contextlib import ExitStack

    config, _ = search_cli.config_from_args(search_cli.build_parser().parse_args(
        ["--out", str(tmp_path), "--smoke"]))
    objectives = parse_objectives(list(config.objectives))

    def unreachable(*args, **kwargs):
        raise UserError("--storage postgresql://db is not a readable Optuna database")

    monkeypatch.setattr(search_cli, "open_study", unreachable)
    with ExitStack() as held, pytest.raises(UserError, match="not a readable"):
        search_cli.create_experiment(config, tmp_path / "new", objectives, held)
    assert list(tmp_path.iterdir()) == []


def test_a_search_stopped_by_storage_exits_1_with_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(argv):
        raise search_cli.SearchStopped("the search stopped: /x/study.journal stopped accepting "
                                       "writes")
    monkeypatch.setattr(search_cli, "run", stopped)
    code, _, err = call(search_cli.main, [], capsys)
    assert_one_error_line(code, err, "/x/study.journal stopped accepting writes", rc=1)


# 6. Files a user can move and share ------------------------------------------------------------
def test_an_sqlite_study_is_complete_in_its_one_file(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    url = f"sqlite:///{database}"
    config, _ = search_cli.config_from_args(search_cli.build_parser().parse_args(
        ["--out", str(tmp_path), "--storage", url, "--epochs", "2", "--pruner", "none"]))
    config = dataclasses.replace(config, image_size=8)
    objectives = parse_objectives(list(config.objectives))
    storage = open_storage(tmp_path, url, create=True, search=True)
    study = search_cli.open_study(config, tmp_path, objectives, False, storage)
    ctrl = search_cli.make_controller(config, tmp_path, study, get_space(config.space),
                                      objectives, search_cli.cost_function(config), False)
    drive(ctrl, "cpc")
    close_storage(storage)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("shared")) == [
        "shared.db"]
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    copy = tmp_path / "elsewhere" / "copy.db"
    copy.parent.mkdir()
    shutil.copy(database, copy)  # only the file the README names
    loaded = optuna.load_study(study_name=config.name, storage=f"sqlite:///{copy}")
    assert [t.state.name for t in loaded.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]


@pytest.mark.parametrize("umask", [0o027, 0o002, 0o077])
def test_every_file_is_as_readable_as_the_umask_allows(tmp_path: Path, umask: int) -> None:
    from trials.training import save_checkpoint

    previous = os.umask(umask)
    try:
        exp = tmp_path / "out" / "resnest"
        exp.mkdir(parents=True)
        with driver_lock(exp):
            ctrl, config = _controller_for(exp, "--epochs", "1", "--pruner", "none")
            drive(ctrl, "cc")
            search_cli.atomic_write_text(ExperimentDir(exp).config, config.to_json())
            save_checkpoint({"weights": torch.zeros(1)}, ExperimentDir(exp).trial("t0000")
                            .checkpoint)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(exp)): p.stat().st_mode & 0o777 for p in exp.rglob("*")}
    assert {"driver.lock", "study.journal", "trials.csv", "experiment.json",
            "trials/t0000/checkpoint.pt"} <= set(modes)
    for name, mode in modes.items():
        expected = (0o777 if (exp / name).is_dir() else 0o666) & ~umask
        assert mode == expected, (name, oct(mode))


def test_a_copied_experiment_resumes_and_reads_the_same(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    exp = stored_experiment(tmp_path / "out", "cc")
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.copytree(exp, moved)
    shutil.rmtree(exp)
    code, out, _ = call(search_cli.main, ["--out", moved.parent, "--name", "moved", "--resume"],
                        capsys)
    assert code == 0 and out.startswith("nothing left to run")
    code, out, _ = call(analysis_cli.main, [moved, "--json"], capsys)
    assert code == 0 and len(json.loads(out)) >= 1


def test_run_cli_lets_a_specific_error_type_win_over_user_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    from search_spaces.cli import run_cli

    class Special(UserError):
        pass

    def run(argv):
        raise Special("broken")

    assert run_cli(run, [], {Special: (1, "special: ")}) == 1
    assert capsys.readouterr().err == "error: special: broken\n"

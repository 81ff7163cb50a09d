"""`python -m nas.search`: bad input is refused before anything is written."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from nas.search.anchor import family_corners
from nas.search.cli import main, parse_duration
from search_spaces import UserError, get_space


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    """An output directory holding one (fake but well-formed) experiment."""
    exp = tmp_path / "out" / "old"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text('{"name": "old"}')
    (exp / "trials.csv").write_text("trial_id,state\nt0000,COMPLETE\n")
    return tmp_path / "out"


BAD = [
    (["--space", "resnet"], "unknown space 'resnet'; valid spaces: resnest"),
    (["--preset", "huge"], "unknown preset 'huge'; valid presets: small, imagenet"),
    (["--sampler", "cma"], "unknown sampler 'cma'; valid samplers: tpe, nsga2"),
    (["--pruner", "asha"], "unknown pruner 'asha'; valid pruners: pareto, median"),
    (["--objectives", "accuracy,flops"], "unknown objective 'flops'; valid objectives:"),
    (["--objectives", "macs"], "objectives must include accuracy"),
    (["--objectives", "accuracy,macs,macs"], "objectives must not repeat"),
    (["--pruner", "median"], "pruner median ranks one objective"),
    (["--trials", "0"], "--trials must be positive, got 0"),
    (["--epochs", "-1"], "--epochs must be positive, got -1"),
    (["--time-budget", "0m"], "--time-budget must be positive"),
    (["--time-budget", "soon"], "--time-budget must look like 90s, 10m or 1h"),
    (["--max-macs", "-5"], "--max-macs must be positive"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    (["--seed-points", "resnest51"], "unknown named point 'resnest51'"),
    (["--name", "old"], "already exists; pass --resume"),
    (["--name", "new", "--resume"], "it is not an experiment (no experiment.json)"),
    (["--data", "cifar10:/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--data", "imagenet"], "imagenet"),
    (["--image-size", "4"], "too small"),
    (["--train-fraction", "0"], "--train-fraction must be in (0, 1], got 0"),
    (["--train-fraction", "1.5"], "--train-fraction must be in (0, 1], got 1.5"),
    (["--max-macs", "1000"], "--max-macs 1000 is unsatisfiable: the cheapest architecture"),
    (["--max-params", "100"], "--max-params 100 is unsatisfiable"),
    (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster at --address 127.0.0.1:1"),
    (["--gpus-per-trial", "1000"],
     "--gpus-per-trial 1000 asks for more GPUs per trial than this machine has"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    args: list[str], message: str, existing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(existing)
    code = main(["--out", str(existing), "--smoke", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert _snapshot(existing) == before
    assert sorted(p.name for p in existing.iterdir()) == ["old"]


def test_contradictory_constraints_are_refused(existing: Path, capsys) -> None:
    # Each bound alone is satisfiable; together no architecture of the space meets both.
    code = main(["--out", str(existing), "--smoke", "--max-macs", "2e6", "--max-params", "2e4"])
    err = capsys.readouterr().err
    assert code == 2 and ("contradict" in err or "unsatisfiable" in err)


def test_unwritable_output_directory_as_a_file(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["--out", str(blocker / "sub"), "--smoke"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_cli_module_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nas.search", "--space", "nope", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown space 'nope'; valid spaces: resnest, resnest-small, resnest-imagenet"
    ]


@pytest.mark.parametrize(("per_trial", "available", "address", "outcome"), [
    (0.5, 0, None, "error"),  # local: Tune would wait for a GPU until the budget ran out
    (2, 1, None, "error"),
    (0.5, 0, "auto",
     "note: --gpus-per-trial 0.5 asks for more GPUs per trial than any node of the Ray cluster"),
    (0, 2, None, "note: Ray sees 2 GPU(s) but --gpus-per-trial is 0"),
    (0.25, 1, None, ""),
    (0, 0, None, ""),
])
def test_check_gpus(per_trial: float, available: float, address: str | None, outcome: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from nas.search.cli import check_gpus

    if outcome == "error":
        with pytest.raises(UserError, match="use --gpus-per-trial 0 to train on the CPUs"):
            check_gpus(per_trial, available, address)
        return
    check_gpus(per_trial, available, address)
    err = capsys.readouterr().err
    assert (outcome in err) if outcome else err == ""


@pytest.mark.parametrize(("per_trial", "available", "address", "outcome"), [
    (64, 2, None, "error"),  # local: Tune would queue the trial until the budget ran out
    (2.5, 2, None, "error"),
    (8, 4, "auto", "note: --cpus-per-trial 8 asks for more CPUs per trial than any node"),
    (2, 2, None, ""),
    (0.5, 1, "auto", ""),
])
def test_check_cpus(per_trial: float, available: float, address: str | None, outcome: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from nas.search.cli import check_cpus

    if outcome == "error":
        with pytest.raises(UserError, match=f"use at most --cpus-per-trial {available:g}"):
            check_cpus(per_trial, available, address)
        return
    check_cpus(per_trial, available, address)
    err = capsys.readouterr().err
    assert (outcome in err) if outcome else err == ""


@pytest.mark.parametrize(("cpus", "gpus", "cpus_per_trial", "gpus_per_trial", "expected"), [
    (2, 0, 1, 0, 2),  # CPU-only: the CPUs decide
    (16, 1, 1, 0, 16),  # GPUs left idle (--gpus-per-trial 0) do not limit CPU trials
    (16, 1, 1, 0.5, 2),  # a GPU box: 2 places on the GPU, not 16 proposals
    (16, 1, 2, 0.25, 4),
    (16, 1, 2, 0.1, 8),  # here the CPUs are the limit
    (16, 3, 1, 0.3, 9),  # a fraction packs within one GPU: 3 per GPU, not 3 / 0.3 = 10
    (16, 4, 1, 2, 2),  # whole GPUs per trial
    (16, 2, 1, 1 / 3, 6),  # 1 / (1/3) rounds to 3 per GPU, not 2
    (4, 0, 1, 0.5, 4),  # no GPU yet (an autoscaler may add GPU nodes): the CPUs decide
    (1, 0, 2, 0, 1),  # never below one
])
def test_default_concurrency_counts_gpus(cpus: float, gpus: float, cpus_per_trial: float,
                                         gpus_per_trial: float, expected: int) -> None:
    from nas.search.cli import default_concurrency

    assert default_concurrency(cpus, gpus, cpus_per_trial, gpus_per_trial) == expected


@pytest.mark.parametrize(("text", "seconds"),
                         [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    with pytest.raises(UserError):
        parse_duration("-3m")


def _controller_for(tmp_path: Path, *flags: str):
    """The controller `python -m nas.search` would build (no Ray, nothing trained)."""
    import dataclasses

    from nas.search import cli as search
    from nas.search.objectives import parse_objectives
    from search_spaces import get_space

    config, _ = search.config_from_args(search.build_parser().parse_args(
        ["--out", str(tmp_path), "--image-size", "8", *flags]))
    config = dataclasses.replace(config, image_size=8)
    objectives = parse_objectives(list(config.objectives))
    study = search.open_study(config, tmp_path, objectives, resume=False)
    return search.make_controller(config, tmp_path, study, get_space(config.space), objectives,
                                  search.cost_function(config), False), config


@pytest.mark.parametrize(("flags", "anchored"), [
    ((), True), (("--no-anchor",), False), (("--objectives", "accuracy"), False),
    (("--objectives", "accuracy,params", "--sampler", "nsga2"), True),
])
def test_cost_aware_searches_evaluate_the_cheapest_corner_first(
        tmp_path: Path, flags: tuple[str, ...], anchored: bool) -> None:
    import numpy as np

    from nas.models.costs import static_costs
    from nas.search.anchor import cheapest_corner, corner_specs
    from search_spaces import get_space

    ctrl, config = _controller_for(tmp_path, *flags)
    space = get_space(config.space)
    corner = cheapest_corner(space, config)
    macs = static_costs(corner, 8).macs
    assert macs == min(static_costs(s, 8).macs for s in corner_specs(space, config))
    rng = np.random.default_rng(0)
    assert all(macs <= static_costs(space.sample(rng).replace(num_classes=10, in_channels=1), 8)
               .macs for _ in range(20))
    trial_id, _ = ctrl.next_trial()
    first = ctrl.records[trial_id].spec
    assert (first.spec_hash == corner.spec_hash) is anchored
    assert config.anchor == ("none" if "--no-anchor" in flags else "families")


@pytest.mark.parametrize(("anchor", "families"), [("families", 4), ("cheapest", 1), ("none", 0)])
def test_the_family_anchors_are_each_familys_cheapest_corner(
        tmp_path: Path, anchor: str, families: int) -> None:
    from nas.models.costs import static_costs
    from nas.search.cli import corner_specs
    from search_spaces import get_space

    ctrl, config = _controller_for(tmp_path, "--anchor", anchor)
    corners = corner_specs(get_space(config.space), config)
    first = [ctrl.records[ctrl.next_trial()[0]].spec for _ in range(families + 1)]
    anchors, proposed = first[:families], first[families]
    assert len({(s.stem, s.avg_down) for s in anchors}) == families  # one per family

    def macs(spec: object) -> int:
        return static_costs(spec, config.image_size).macs

    for spec in anchors:
        assert spec in corners and macs(spec) == min(
            macs(c) for c in corners if (c.stem, c.avg_down) == (spec.stem, spec.avg_down))
    assert [macs(s) for s in anchors] == sorted(macs(s) for s in anchors)  # cheapest first
    assert proposed not in corners  # then the sampler proposes


def test_experiments_from_before_the_anchor_resume_without_it() -> None:
    import json

    from nas.experiment import ExperimentConfig

    config = ExperimentConfig(name="x", space="resnest", preset="small", data="digits",
                              image_size=8, objectives=("accuracy", "macs"), epochs=1, trials=1,
                              time_budget_s=1.0, sampler="tpe", pruner="pareto", seed=0,
                              storage="")
    assert config.anchor == "families"
    stored = json.loads(config.to_json())
    assert ExperimentConfig.from_json(json.dumps(stored)).anchor == "families"
    for old, now in ((True, "cheapest"), (False, "none")):  # before the family anchors
        stored["anchor"] = old
        assert ExperimentConfig.from_json(json.dumps(stored)).anchor == now
    del stored["anchor"]
    assert ExperimentConfig.from_json(json.dumps(stored)).anchor == "none"


# The study -------------------------------------------------------------------------------------
def test_the_pruner_never_stops_an_anchor(tmp_path: Path) -> None:
    """Four family anchors, then proposals, all reporting the same poor rung-2 accuracy after
    a good first trial: the pruner stops the proposals that reach rung 2, never an anchor."""
    ctrl, config = _controller_for(tmp_path, "--epochs", "4", "--trials", "8")
    stopped = {}
    for index in range(8):
        trial_id, _ = ctrl.next_trial()
        for epoch in range(1, config.epochs + 1):
            accuracy = 0.9 if index == 0 else 0.1 * epoch / config.epochs
            if ctrl.on_result(trial_id, {"epoch": epoch, "val_top1": accuracy,
                                         "train_loss": 1.0}):
                break
        stopped[trial_id] = epoch < config.epochs
        ctrl.on_complete(trial_id, None)
    anchors = {s.spec_hash for s in family_corners(get_space(config.space), config)}
    assert ctrl.unpruned == anchors
    spec_of = {t: ctrl.records[t].spec.spec_hash for t in stopped}
    assert sum(spec_of[t] in anchors for t in stopped) == 4
    assert not any(stopped[t] for t in stopped if spec_of[t] in anchors)
    assert any(stopped[t] for t in stopped if spec_of[t] not in anchors)  # the pruner works
    assert all(ctrl.records[t].state == ("PRUNED" if stopped[t] else "COMPLETE")
               for t in stopped)


def _drive(ctrl, outcomes: str) -> list[str]:
    """One trial per letter, run without Ray: c completes, p is pruned after one epoch, f fails,
    r is left running (its driver is about to die) after one epoch; the trial ids."""
    ids = []
    for index, outcome in enumerate(outcomes):
        trial_id, _ = ctrl.next_trial()
        ids.append(trial_id)
        epochs = ctrl.config.epochs if outcome == "c" else 1
        for epoch in range(1, epochs + 1):
            ctrl.on_result(trial_id, {"epoch": epoch, "val_top1": 0.1 * (index + epoch),
                                      "train_loss": 1.0})
        if outcome == "f":
            ctrl.on_complete(trial_id, {"epoch": 1, "failed": "non-finite loss"})
        elif outcome == "p":
            ctrl.pruned[trial_id] = "pruned at epoch 1 by test"
            ctrl.on_complete(trial_id, None)
        elif outcome == "c":
            ctrl.on_complete(trial_id, None)
    return ids


OPTUNA_STATE = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAIL", "RUNNING": "RUNNING",
                "INFEASIBLE": "COMPLETE"}


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_the_study_holds_every_trial_as_recorded(tmp_path: Path, storage: str) -> None:
    """The default study is Optuna's journal file, read back with `optuna.load_study` as the
    README shows; `--storage` an SQLite database. Either holds every trial from its start."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    flags = ("--storage", url) if storage == "sqlite" else ()
    ctrl, config = _controller_for(tmp_path, "--epochs", "2", "--pruner", "none", *flags)
    _drive(ctrl, "cpfcr")
    if storage == "journal":
        backend = JournalFileBackend(str(tmp_path / "study.journal"))
        study = optuna.load_study(study_name=config.name,
                                  storage=optuna.storages.JournalStorage(backend))
    else:
        assert not (tmp_path / "study.journal").exists()
        study = optuna.load_study(study_name=config.name, storage=url)
    trials = study.get_trials()
    assert len(trials) == len(ctrl.records) == 5
    for record in ctrl.records.values():
        trial = trials[record.number]
        assert trial.state.name == OPTUNA_STATE[record.state], record
        assert trial.user_attrs["spec"] == record.spec.to_json()
        if record.state == "COMPLETE":
            assert trial.values == [record.accuracy, record.costs["macs"]]
        if record.state in ("PRUNED", "RUNNING"):  # what the pruner ranked them by
            assert trial.user_attrs["intermediate_accuracy"] == {"1": record.accuracy}


def test_resume_closes_interrupted_trials_and_queues_them_again(tmp_path: Path) -> None:
    """A driver killed with a trial running (and a seed enqueued but never asked): on resume
    the study holds neither RUNNING nor WAITING trials, the running one's spec runs again from
    its checkpoint, and finished trials are kept as they are."""
    import optuna

    from nas.experiment import ExperimentDir, read_trials_csv
    from nas.search import cli as search
    from nas.search.objectives import parse_objectives
    from search_spaces import get_space

    ctrl, config = _controller_for(tmp_path, "--epochs", "2", "--pruner", "none")
    running = _drive(ctrl, "ccr")[-1]
    checkpoint = ExperimentDir(tmp_path).trial(running).checkpoint
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    ctrl.study.enqueue_trial(ctrl.space.params_of(ctrl.records["t0000"].spec))
    before = read_trials_csv(tmp_path)
    del ctrl  # the driver dies here: nothing is closed or flushed

    objectives = parse_objectives(list(config.objectives))
    study = search.open_study(config, tmp_path, objectives, resume=True)
    again = search.make_controller(config, tmp_path, study, get_space(config.space), objectives,
                                   search.cost_function(config), True)
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.WAITING not in states
    after = read_trials_csv(tmp_path)
    assert after[:2] == before[:2]  # finished: kept exactly
    assert after[2].state == "FAIL" and after[2].reason.endswith("re-queued on resume")
    trial_id, trial_config = again.next_trial()
    assert again.records[trial_id].spec == before[2].spec
    assert trial_config["resume_from"] == str(checkpoint)
    assert int(trial_id[1:]) == len(states)  # numbers continue after every trial of the study


def _study_with_one_trial(tmp_path: Path):
    ctrl, config = _controller_for(tmp_path, "--epochs", "1", "--pruner", "none")
    _drive(ctrl, "c")
    return config


def test_a_damaged_study_is_refused_on_resume_unchanged(tmp_path: Path, damage) -> None:
    from nas.search import cli as search
    from nas.search.objectives import parse_objectives

    config = _study_with_one_trial(tmp_path)
    journal = tmp_path / "study.journal"
    damage(journal)
    before = _snapshot(tmp_path)
    with pytest.raises(UserError) as refused:
        search.open_study(config, tmp_path, parse_objectives(list(config.objectives)),
                          resume=True)
    message = str(refused.value)
    assert str(journal) in message and "\n" not in message
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("resume", [False, True])
def test_a_foreign_storage_database_is_refused_unchanged(tmp_path: Path, resume: bool) -> None:
    import dataclasses
    import sqlite3

    from nas.search import cli as search
    from nas.search.objectives import parse_objectives

    database = tmp_path / "notes.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    before = _snapshot(tmp_path)
    config, _ = search.config_from_args(search.build_parser().parse_args(
        ["--out", str(tmp_path), "--storage", f"sqlite:///{database}"]))
    with pytest.raises(UserError, match="is not a readable Optuna database"):
        search.open_study(dataclasses.replace(config, image_size=8), tmp_path,
                          parse_objectives(list(config.objectives)), resume=resume)
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_resume_of_a_damaged_study_is_one_line_exit_2(tmp_path: Path) -> None:
    """The real `--resume` (it starts Ray before it opens the study: Ray may print first)."""
    exp = tmp_path / "out" / "resnest"
    exp.mkdir(parents=True)
    config = _study_with_one_trial(exp)
    (exp / "experiment.json").write_text(config.to_json())
    (exp / "study.journal").write_bytes(bytes(range(256)) * 16)
    before = _snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "nas.search", "--out", str(exp.parent),
                           "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == done.stderr.splitlines()[-1:]  # Ray's start-up notes may come before it
    assert str(exp / "study.journal") in errors[0] and "Traceback" not in done.stderr
    after = _snapshot(tmp_path)
    assert after.pop("out/resnest/driver.lock") == hashlib.sha256(b"").hexdigest()  # released
    assert after == before


def test_an_experiment_from_before_the_journal_opens_its_sqlite_study(tmp_path: Path) -> None:
    import optuna

    from nas.experiment import ExperimentDir, open_storage

    legacy = ExperimentDir(tmp_path).legacy_study
    old = optuna.create_study(storage=f"sqlite:///{legacy}", study_name="old",
                              directions=["maximize", "minimize"])
    old.add_trial(optuna.trial.create_trial(values=[0.5, 3.0]))
    storage = open_storage(tmp_path)
    assert isinstance(storage, optuna.storages.RDBStorage)
    loaded = optuna.load_study(study_name="old", storage=storage)
    assert [t.values for t in loaded.trials] == [[0.5, 3.0]]
    assert not ExperimentDir(tmp_path).study.exists()

"""The console: `resnest-nas COMMAND` (the same as each `python -m` form), packaging (console
script, py.typed, the [onnx] extra), every default in --help, the running trials' status line,
and optuna-dashboard's labels."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nas import console
from nas.experiment import ExperimentConfig
from nas.search import cli as search_cli
from nas.search.controller import STATUS_EVERY_S, SearchController
from nas.search.objectives import parse_objectives
from search_spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
MODULES = {name: module for name, (module, _) in console.COMMANDS.items()}


def _help(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    return capsys.readouterr().out


# The dispatcher -------------------------------------------------------------------------------
def test_commands_are_the_python_m_forms() -> None:
    assert MODULES == {"search": "nas.search.cli", "pareto": "analysis.pareto",
                       "export": "nas.export.cli", "train": "trials.train", "costs": "nas.costs",
                       "latency": "nas.latency.cli", "supernet": "nas.supernet.train"}


@pytest.mark.parametrize("name", list(MODULES))
def test_each_command_help_equals_its_module_help(name: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(MODULES[name])
    assert _help(console.main, [name, "--help"], capsys) == _help(module.main, ["--help"], capsys)


def test_command_arguments_pass_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert console.main(["costs", "resnest14d", "--no-latency", "--json"]) == 0
    assert '"params": ' in capsys.readouterr().out
    assert console.main(["costs", "resnest999", "--no-latency"]) == 2
    assert "unknown named point 'resnest999'" in capsys.readouterr().err


def test_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in MODULES)
    assert console.main([]) == 2
    assert "usage: resnest-nas COMMAND" in capsys.readouterr().err
    assert console.main(["serach"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown command 'serach'")


# Packaging ------------------------------------------------------------------------------------
def test_console_script_and_type_markers_are_installed() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "resnest-nas"] == ["nas.console:main"]
    for package in ("nas", "search_spaces", "trials", "analysis"):
        assert (ROOT / package / "py.typed").is_file()
    extras = importlib.metadata.metadata("resnest-nas").get_all("Provides-Extra")
    assert {"onnx", "test"} <= set(extras)
    requires = importlib.metadata.requires("resnest-nas")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.startswith(("onnx", "torchvision"))]
    onnx = {re.split(r"[<>=;\s]", r)[0] for r in requires if 'extra == "onnx"' in r}
    assert onnx == {"onnx", "onnxscript", "onnxruntime"}


def test_console_script_runs_in_a_real_process(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("resnest-nas")
    if not script.is_file():
        pytest.skip("the console script is installed with `pip install -e .`")
    done = subprocess.run([str(script), "pareto", str(tmp_path / "none")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "does not exist" in done.stderr


# --help shows every default --------------------------------------------------------------------
def _options(help_text: str) -> list[str]:
    """The help text of each option that takes a value (flags need no default)."""
    entries, current = [], None
    for line in help_text.splitlines():
        if re.match(r"^  -", line):
            current = [line]
            entries.append(current)
        elif current is not None and line.startswith("    "):
            current.append(line)
        else:
            current = None
    joined = [" ".join(e) for e in entries]
    return [e for e in joined if re.match(r"^\s+(-\w, )?--[\w-]+ [A-Z{]", e)]


@pytest.mark.parametrize("name", list(MODULES))
def test_help_states_every_default(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    sub = ["profile"] if name == "latency" else []  # its options are the subcommand's
    text = _help(console.main, [name, *sub, "--help"], capsys)
    options = _options(text)
    assert options
    missing = [o.split()[0] for o in options if "default" not in o and "required" not in o]
    assert missing == [], f"{name}: no default stated for {missing}"


# Status while trials run -----------------------------------------------------------------------
def _controller(tmp_path: Path, log: list[str]) -> SearchController:
    config = ExperimentConfig(name="t", space="resnest", preset="small", data="digits",
                              image_size=16, objectives=("accuracy", "macs"), epochs=4, trials=5,
                              time_budget_s=300.0, sampler="random", pruner="none", seed=0,
                              storage="")
    objectives = parse_objectives("accuracy,macs")
    study = optuna.create_study(directions=[o.direction for o in objectives], study_name="t",
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.NopPruner())

    def costs(spec) -> dict[str, float]:
        return {"macs": float(sum(s.depth * s.width for s in spec.stages)), "params": 1.0}

    return SearchController(config, tmp_path, study, get_space("resnest"), objectives, costs,
                            lambda tid, spec, c, resume: {"trial_id": tid}, log=log.append)


def test_status_of_running_every_30_seconds_on_the_drivers_clock(tmp_path: Path) -> None:
    """Deterministic: the clock is passed in. A line at most every STATUS_EVERY_S, naming each
    running trial's finished epochs and the time left."""
    ctrl = _controller(tmp_path, [])
    first, _ = ctrl.next_trial()
    second, _ = ctrl.next_trial()
    ctrl.on_result(first, {"epoch": 1, "val_top1": 0.5, "train_loss": 1.0})
    ctrl.on_result(first, {"epoch": 2, "val_top1": 0.6, "train_loss": 0.9})
    start = ctrl.started
    assert ctrl.status_of_running(start + 1) is None
    assert ctrl.status_of_running(start + STATUS_EVERY_S - 0.01) is None
    line = ctrl.status_of_running(start + STATUS_EVERY_S)
    assert line == (f"  running {first} epoch 2/4, {second} epoch 0/4 | 0:30 elapsed, "
                    "4:30 left")
    assert ctrl.status_of_running(start + STATUS_EVERY_S + 29) is None
    ctrl.on_complete(first, {"epoch": 2, "val_top1": 0.6, "train_loss": 0.9})
    assert ctrl.status_of_running(start + 2 * STATUS_EVERY_S + 1) == (
        f"  running {second} epoch 0/4 | 1:01 elapsed, 3:59 left")
    ctrl.on_complete(second, None)
    assert ctrl.status_of_running(start + 400).startswith("  running none | 6:40 elapsed, 0:00")


def test_finished_trials_carry_epochs_and_reason_for_the_dashboard(tmp_path: Path) -> None:
    ctrl = _controller(tmp_path, [])
    trial_id, _ = ctrl.next_trial()
    ctrl.on_result(trial_id, {"epoch": 1, "val_top1": 0.5, "train_loss": 1.0})
    ctrl.pruned[trial_id] = "pruned at epoch 1 by pareto"
    ctrl.on_complete(trial_id, None)
    (frozen,) = ctrl.study.get_trials()
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.user_attrs["epochs"] == 1
    assert frozen.user_attrs["reason"] == "pruned at epoch 1 by pareto"


def test_study_is_labelled_for_optuna_dashboard(tmp_path: Path) -> None:
    config = ExperimentConfig(name="lab", space="resnest", preset="small", data="digits",
                              image_size=16, objectives=("accuracy", "params"), epochs=3,
                              trials=4, time_budget_s=60.0, sampler="random", pruner="none",
                              seed=0, storage="", constraints={"max_macs": 1e6})
    objectives = parse_objectives("accuracy,params")
    study = search_cli.open_study(config, tmp_path, objectives, resume=False)
    assert study.metric_names == ["accuracy", "params"]
    attrs = study.user_attrs
    assert attrs["objectives"] == ["accuracy", "params"] and attrs["epochs"] == 3
    assert attrs["constraints"] == {"max_macs": 1e6} and attrs["sampler"] == "random"
    again = search_cli.open_study(config, tmp_path, objectives, resume=True)
    assert again.user_attrs == attrs and again.metric_names == ["accuracy", "params"]


def test_tune_asks_for_the_status_line_on_every_loop() -> None:
    """The driver's Tune callback passes the controller's due lines to its log."""
    from trials.ray_runner import _StatusCallback

    class Controller:
        def __init__(self) -> None:
            self.lines, self.due = [], iter([None, "  running t0001 epoch 1/4", None])

        def status_of_running(self) -> str | None:
            return next(self.due)

        def log(self, line: str) -> None:
            self.lines.append(line)

    controller = Controller()
    callback = _StatusCallback(controller)
    for iteration in range(3):
        callback.on_step_begin(iteration, [])
    assert controller.lines == ["  running t0001 epoch 1/4"]


# Ray's and Optuna's own messages only with --verbose ---------------------------------------------
RAY_NOTICE = "Token authentication is enabled for this Ray cluster"


@pytest.mark.parametrize("verbose", [False, True])
def test_rays_token_notice_only_when_verbose(verbose: bool, tmp_path: Path) -> None:
    script = ("import ray\nfrom trials import ray_runner\n"
              f"ray_runner.connect(None, num_cpus=1, verbose={verbose})\n"
              "assert ray.is_initialized()\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's own default
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (RAY_NOTICE in done.stderr) == verbose, done.stderr[-2000:]


@pytest.mark.parametrize("verbose", [False, True])
def test_optunas_info_lines_only_when_verbose(verbose: bool, tmp_path: Path) -> None:
    """The search's study sets Optuna's verbosity: WARNING, or INFO (a line per trial) with
    --verbose."""
    config = ExperimentConfig(name="quiet", space="resnest", preset="small", data="digits",
                              image_size=16, objectives=("accuracy", "macs"), epochs=1, trials=1,
                              time_budget_s=60.0, sampler="random", pruner="none", seed=0,
                              storage="")
    try:
        search_cli.open_study(config, tmp_path, parse_objectives("accuracy,macs"), resume=False,
                              verbose=verbose)
        expected = optuna.logging.INFO if verbose else optuna.logging.WARNING
        assert optuna.logging.get_verbosity() == expected
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)

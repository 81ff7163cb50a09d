"""Shared fixtures.

`small_experiment`: ONE real experiment directory per test session, for analysis and export tests.
Until `python -m nas.search --smoke` runs end to end, it is written here by hand (clearly a test
fixture): a few tiny specs trained for real with `trials.training` on a subset of digits at 8 px,
then experiment.json, trials.csv, an Optuna journal study and checkpoints in the layout
`nas.experiment` documents. States covered: COMPLETE (incl. a named seed point), PRUNED (with a
checkpoint from epoch 1) and FAIL (no checkpoint).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

FIXTURE_NAME = "fx"
FIXTURE_SEED_POINT = "resnest14d"
FIXTURE_IMAGE_SIZE = 8
FIXTURE_EPOCHS = 2


def _fixture_specs() -> list[tuple[str, Any]]:
    """(planned state, spec) for each trial; all but the seed point lie inside the small space."""
    from search_spaces import ArchSpec, StageSpec, named_point

    task = {"num_classes": 10, "in_channels": 1, "input_regime": "small"}
    common = {"stem_width": 8, "base_planes": 16, "attn_min_width": 8, **task}

    def spec(stages: list[tuple[int, int, int, int]], **kw: Any) -> ArchSpec:
        return ArchSpec(stages=tuple(StageSpec(*s) for s in stages), **{**common, **kw})

    return [
        ("COMPLETE", named_point(FIXTURE_SEED_POINT).replace(**task)),  # seed points run first
        ("COMPLETE", spec([(1, 2, 1, 16)] * 4)),
        ("COMPLETE", spec([(1, 0, 2, 8)] * 4, stem="plain", avg_down=False, avd=False)),
        ("COMPLETE", spec([(1, 1, 2, 24)] * 4, avd_first=True, attn_reduction=2)),
        ("COMPLETE", spec([(1, 0, 1, 8), (1, 4, 1, 16), (2, 1, 2, 8), (1, 2, 1, 8)],
                          dropout=0.1, attn_min_width=16)),
        ("PRUNED", spec([(1, 2, 2, 16)] * 4, stem_width=16)),
        ("FAIL", spec([(2, 1, 1, 8)] * 4)),
    ]


def _static_costs(model: Any, image_size: int, in_channels: int) -> dict[str, float]:
    """Exact parameter count and conv/linear MACs of one image (hooks; fixture-only stand-in)."""
    import torch

    macs = 0

    def hook(module: Any, inputs: Any, output: Any) -> None:
        nonlocal macs
        weight = module.weight
        per_output = weight[0].numel()
        macs += per_output * output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, image_size, image_size))
    for h in handles:
        h.remove()
    return {"params": float(sum(p.numel() for p in model.parameters())), "macs": float(macs)}


def build_fixture_experiment(root: Path) -> Path:
    """Train the fixture specs and write a complete experiment directory under `root`.

    One torch thread: tiny convs on a shared 2-core machine run ~10x slower oversubscribed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(root)
    finally:
        torch.set_num_threads(threads)


def _build(root: Path) -> Path:
    import optuna
    import torch
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    import nas
    from nas.experiment import ExperimentConfig, ExperimentDir, TrialRecord, write_trials_csv
    from search_spaces import get_space
    from trials.data import Split, load_data
    from trials.training import TrainConfig, Trainer, save_checkpoint

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp = root / FIXTURE_NAME
    exp.mkdir(parents=True)
    space = get_space("resnest")
    train_cfg = TrainConfig(epochs=FIXTURE_EPOCHS, batch_size=32, seed=0, optimizer="adamw",
                            lr=3e-3)
    config = ExperimentConfig(
        name=FIXTURE_NAME, space="resnest", preset="small", data="digits",
        image_size=FIXTURE_IMAGE_SIZE, objectives=("accuracy", "macs"), epochs=FIXTURE_EPOCHS,
        trials=7, time_budget_s=120.0, sampler="tpe", pruner="pareto", seed=0, storage="",
        seed_points=(FIXTURE_SEED_POINT,), train=train_cfg.to_dict(),
    )
    (exp / "experiment.json").write_text(config.to_json())
    data = load_data("digits", FIXTURE_IMAGE_SIZE, include_test=False)
    subset = torch.arange(0, len(data.train), 3)  # ~420 images: fast, still learnable
    data = dataclasses.replace(data, train=Split(labels=data.train.labels[subset],
                                                 images=data.train.images[subset]))
    journal = JournalFileBackend(str(ExperimentDir(exp).study))  # the search's default storage
    study = optuna.create_study(storage=optuna.storages.JournalStorage(journal),
                                study_name=FIXTURE_NAME, directions=["maximize", "minimize"])
    records = []
    for number, (state, spec) in enumerate(_fixture_specs()):
        inside = space.contains(spec)
        if inside:
            study.enqueue_trial(space.params_of(spec))
        trial = study.ask()
        if inside:
            assert space.suggest(trial).replace(num_classes=10, in_channels=1) == spec
        trial_id = f"t{number:04d}"
        torch.manual_seed(0)
        model = nas.build_model(spec)
        costs = _static_costs(model, FIXTURE_IMAGE_SIZE, 1)
        for key, value in {"spec": spec.to_json(), "tag": spec.tag, **costs,
                           "constraint_violations": [0.0]}.items():
            trial.set_user_attr(key, value)
        checkpoint = None
        curve: list[dict[str, Any]] = []
        reason = ""
        if state != "FAIL":
            trainer = Trainer(model, data, train_cfg)
            for _ in range(FIXTURE_EPOCHS if state == "COMPLETE" else 1):
                trainer.train_epoch()
            curve = [{k: e[k] for k in ("epoch", "train_loss", "val_top1", "val_top5", "lr")}
                     for e in trainer.curve]
            trial_dir = exp / "trials" / trial_id
            trial_dir.mkdir(parents=True)
            (trial_dir / "spec.json").write_text(spec.to_json(indent=2))
            state_dict = {**trainer.state_dict(), "epochs": FIXTURE_EPOCHS,
                          "spec": spec.to_dict(), "config": {"data": "digits"},
                          "data": data.describe(), "costs": costs}
            checkpoint = str(save_checkpoint(state_dict, trial_dir / "checkpoint.pt"))
        if state == "COMPLETE":
            study.tell(trial, [curve[-1]["val_top1"], costs["macs"]])
        else:
            reason = ("pruned at epoch 1 by pareto" if state == "PRUNED"
                      else "non-finite training loss (nan) in epoch 1 by step 3")
            study.tell(trial, state=getattr(TrialState, state))
        records.append(TrialRecord(trial_id, number, state, spec, costs, tuple(curve),
                                   reason=reason, seconds=1.0, checkpoint=checkpoint))
    write_trials_csv(exp, records)
    return exp


def _sqlite_file(path: Path) -> None:
    import sqlite3

    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()


# Ways a study file goes wrong: each takes the path of a good journal and spoils it in place.
DAMAGES: dict[str, Any] = {
    "garbage bytes": lambda p: p.write_bytes(bytes(range(256)) * 16),
    "an SQLite database": _sqlite_file,
    "JSON lines that are no journal": lambda p: p.write_text('{"trials": []}\n'),
    "a record torn mid-write": lambda p: p.write_bytes(p.read_bytes() + b'{"op_code": 5, "wor'),
    "a foreign last line": lambda p: p.write_bytes(p.read_bytes() + b"not a record\n"),
    "a foreign line inside": lambda p: p.write_bytes(p.read_bytes().replace(
        b"\n", b"\nnot a record\n", 1)),
}


@pytest.fixture(params=list(DAMAGES))
def damage(request: pytest.FixtureRequest) -> Any:
    """A function spoiling a journal file in place (one way per parametrized run)."""
    return DAMAGES[request.param]


@pytest.fixture(scope="session")
def small_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the session's small experiment (treat as read-only; copy it to modify)."""
    return build_fixture_experiment(tmp_path_factory.mktemp("experiments"))


@pytest.fixture(scope="session")
def searched_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An experiment written by the real `python -m nas.search --smoke` (Ray Tune, Optuna), for
    the slow end-to-end checks that analysis and export read what the search writes. Its trial
    states depend on scheduling, so exact-value tests use `small_experiment` instead."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("searched")
    command = [sys.executable, "-m", "nas.search", "--smoke", "--out", str(out), "--name", "fx",
               "--seed-points", FIXTURE_SEED_POINT, "--trials", "3", "--epochs", "1",
               "--pruner", "none", "--concurrency", "1", "--time-budget", "10m"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "fx"


# Tests that take seconds each (a fresh interpreter, a local Ray, torch.compile, ONNX, a
# torchvision detector, whole-network passes over many specs) are kept out of the fast tier
# (`pytest -m "not slow"`); CI runs every test. Listed here, by test function, in one place.
SLOW_TESTS = frozenset({
    "test_console.py::test_rays_token_notice_only_when_verbose",
    "test_console.py::test_console_script_runs_in_a_real_process",
    "test_builder.py::test_space_samples_forward_backward",
    "test_builder.py::test_matches_timm_exactly",
    "test_builder.py::test_space_samples_have_reference_parameter_counts",
    "test_backbone.py::test_exported_module_drives_torchvision_fpn_and_faster_rcnn",
    "test_model_export.py::test_compile_captures_one_graph_and_matches_eager_gradients",
    "test_model_export.py::test_onnx_export_runs_in_onnxruntime",
    "test_model_export.py::test_torch_export_with_dynamic_batch",
    "test_export.py::test_generated_module_equals_build_model",
    "test_export.py::test_cli_entry_point_prints_one_line",
    "test_export.py::test_onnx_mismatch_fails_and_writes_nothing",
    "test_export.py::test_wrong_module_outputs_fail_and_write_nothing",
    "test_export.py::test_wrong_backbone_maps_fail_and_write_nothing",
    "test_export.py::test_module_importing_the_project_fails_verification",
    "test_export.py::test_force_overwrites_existing_outputs",
    "test_search_cli.py::test_cli_module_exits_2_without_traceback",
    "test_analysis.py::test_cli_subprocess_not_an_experiment_one_line",
    "test_costs.py::test_cli_module_entry_point_bad_json_file",
    "test_costs.py::test_memory_trace_on_meta_equals_real_tensors",
    "test_fashion_mnist.py::test_the_script_regenerates_the_subset",
    "test_resnest_bench.py::test_the_table_appends_resumes_and_each_row_reproduces",
    "test_search_evidence.py::test_a_trained_search_is_the_quick_starts_and_resumes_run_by_run",
    "test_search_evidence.py::test_a_run_the_controller_ends_before_the_budget_writes_no_result",
    "test_train_cli.py::test_export_of_an_unfinished_run_needs_allow_partial",
    "test_supernet_search.py::test_one_ray_train_worker_trains_what_the_process_trains",
    "test_supernet_search.py::test_a_supernet_search_estimates_fine_tunes_and_exports",
    "test_supernet_search.py::test_a_killed_supernet_search_resumes",
    "test_supernet_search.py::test_two_ray_train_workers_train_data_parallel",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = f"{Path(item.fspath).name}::{getattr(item, 'originalname', item.name)}"
        if name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


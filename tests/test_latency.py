"""Latency (issue 22): the backends and their one definition, the parts of a network and of a
space, latency tables (prediction = constant + sum of parts; tables for another space, size,
task or backend refused), `nas.latency profile`, the worker measuring a trial's latency before
training (never the driver), and every bad input as one error line with nothing written.

No timing thresholds: figures are only checked to be positive and finite; predictions are
checked against the table's own numbers, exactly."""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from data_fixtures import tiny_spec

from nas import build_model
from nas.experiment import ExperimentConfig
from nas.latency import cli as latency_cli
from nas.latency.parts import Part, normalised, parts_of, space_parts
from nas.latency.profile import profile, sample_networks
from nas.latency.table import LatencyTable, load_table, mape, spearman
from nas.models.latency import BACKENDS, LatencyBackend, LatencySettings, make_backend
from nas.search import cli as search_cli
from nas.search.controller import SearchController
from nas.search.objectives import parse_objectives
from nas.search.strategy import VIOLATIONS_ATTR
from search_spaces import ArchSpec, UserError, get_space, named_point
from search_spaces.block_plan import block_plan
from trials import ray_runner
from trials.latency_step import TrainingGate, latency_report, measurement_lock, trial_latency
from trials.trial_config import build_trial_config

FAST_BACKENDS = [b for b in BACKENDS if b != "compile"]  # compile: seconds per module, slow tier
QUICK = {"warmup": 0, "runs": 1}


def _backends() -> list[object]:
    return [*FAST_BACKENDS, pytest.param("compile", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_space():
    return get_space("resnest", "small")


@pytest.fixture(scope="module")
def slice_tables(small_space) -> dict[str, LatencyTable]:
    """A table per fast backend for a small slice of the space (the parts of 2 + 3 sampled
    networks at 16 px), timed once each."""
    return {name: profile(small_space, "resnest", 16, 10, 1, make_backend(name, **QUICK), fit=2,
                          validate=3, seed=0, only_sampled=True, log=lambda _: None)
            for name in FAST_BACKENDS}


# Backends ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _backends())
def test_each_backend_times_a_module_and_a_network(name: str) -> None:
    backend = make_backend(name, **QUICK)
    part = parts_of(tiny_spec(), 8)[1]
    for value in (backend.measure(part.build(), part.input_shape),
                  backend.measure_spec(tiny_spec(), 8)):
        assert math.isfinite(value) and value > 0
    assert backend.name == name


def test_the_definition_states_every_setting() -> None:
    text = LatencySettings("onnxruntime", batch_size=4, threads=2, warmup=3, runs=7).describe()
    for piece in ("median of 7 timed forwards after 3 warm-up", "backend onnxruntime",
                  "batch 4", "fp32", "cpu, 2 threads"):
        assert piece in text


@pytest.mark.parametrize("settings,message", [
    ({"backend": "tvm"}, "unknown latency backend 'tvm'; valid backends: torch, compile, "
                         "onnxruntime"),
    ({"precision": "int8"}, "unknown precision 'int8'"),
    ({"backend": "onnxruntime", "precision": "bf16"}, "fp32 only"),
    ({"precision": "fp16"}, "fp16 latency needs"),
    ({"device": "tpu"}, "cpu or cuda"),
    ({"batch_size": 0}, "batch size must be an integer >= 1"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"runs": 0}, "runs must be an integer >= 1"),
])
def test_bad_settings_are_user_errors(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        LatencyBackend(LatencySettings(**settings))


def test_a_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"needs the \[onnx\] extra .*resnest-nas\[onnx\]"):
        make_backend("onnxruntime")


# Parts ------------------------------------------------------------------------------------------
def test_a_network_is_its_stem_blocks_and_head(small_space) -> None:
    spec = small_space.sample(np.random.default_rng(0))
    parts = parts_of(spec, 16)
    assert [p.kind for p in parts] == ["stem"] + ["block"] * sum(s.depth for s in spec.stages) \
        + ["head"]
    # The parts run in sequence compute what the network computes.
    model = build_model(spec).eval()
    x = torch.randn(1, spec.in_channels, 16, 16)
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    blocks = [b for i in range(1, 7) for b in getattr(model, f"layer{i}").children()]
    with torch.no_grad():
        y = x
        for module, part in zip([stem, *blocks, model.forward_head], parts, strict=True):
            assert tuple(y.shape[1:]) == part.input_shape, part.key
            y = module(y)
        assert torch.allclose(y, model(x), atol=1e-5)


def test_arguments_that_change_nothing_share_a_key() -> None:
    spec = named_point("resnest26d")
    later = block_plan(spec)[1][1]  # stride 1, no shortcut conv
    assert normalised(later._replace(avd=not later.avd, avg_down=not later.avg_down)) \
        == normalised(later)
    first = block_plan(spec)[1][0]  # strided: avd and avg_down change the computation
    assert normalised(first._replace(avd=not first.avd)) != normalised(first)


@pytest.mark.slow  # enumerates the whole space (seconds)
def test_the_space_parts_hold_every_part_of_its_networks(small_space) -> None:
    parts = space_parts(small_space, 16, 10, 1)
    rng = np.random.default_rng(5)
    for _ in range(300):
        spec = small_space.sample(rng)
        assert {p.key for p in parts_of(spec, 16)} <= set(parts)


# Tables -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_a_slice_table_predicts_exactly_the_sum_of_its_parts(slice_tables, name: str) -> None:
    table = slice_tables[name]
    assert not table.complete and table.settings.backend == name
    networks = [json.loads(r["spec"]) for r in [*table.fit, *table.validation["networks"]]]
    assert len(networks) == 5
    for data in networks:
        spec = ArchSpec.from_dict(data)
        expected = table.constant_ms
        for part in parts_of(spec, 16):
            expected += table.parts[part.key]
        assert table.predict(spec) == expected
    # The stored prediction of each held-out network is that sum too.
    for r in table.validation["networks"]:
        assert r["predicted_ms"] == table.constant_ms + r["parts_ms"]


@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_a_table_round_trips_through_its_file(slice_tables, name: str, tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(slice_tables[name].to_json())
    again = load_table(path)
    assert again == slice_tables[name]
    assert json.loads(path.read_text())["definition"] == again.settings.describe()


def test_a_table_lacking_a_part_names_it(slice_tables, small_space) -> None:
    table = slice_tables["torch"]
    rng = np.random.default_rng(99)
    spec = next(s for s in (small_space.sample(rng) for _ in range(500))
                if any(p.key not in table.parts for p in parts_of(s, 16)))
    missing = next(p.key for p in parts_of(spec, 16) if p.key not in table.parts)
    with pytest.raises(UserError) as err:
        table.predict(spec)
    assert f"lacks part {missing}, which {spec.tag} needs" in str(err.value)


@pytest.mark.parametrize("other,message", [
    ({"preset": "imagenet"}, "space preset small, not imagenet"),
    ({"image_size": 32}, "image size 16, not 32"),
    ({"backend": "onnxruntime"}, "backend torch, not onnxruntime"),
    ({"num_classes": 100}, "num_classes 10, not 100"),
])
def test_a_table_for_another_search_is_refused(slice_tables, other: dict, message: str) -> None:
    want = {"preset": "small", "image_size": 16, "backend": "torch", "num_classes": 10,
            **other}
    with pytest.raises(UserError, match=message):
        slice_tables["torch"].check_for(**want)
    slice_tables["torch"].check_for(preset="small", image_size=16, backend="torch")


@pytest.mark.parametrize("text,message", [
    ("not json", "is not a latency table (not JSON"),
    ('{"a": 1}', "is not a latency table (no \"format\""),
    ('{"format": "resnest-nas latency table", "version": 9}', "of version 9"),
    ('{"format": "resnest-nas latency table", "version": 1, "parts": {}}',
     "not a valid latency table"),
])
def test_what_is_not_a_table_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_table(path)
    assert message in str(err.value)


def test_the_error_figures() -> None:
    assert mape([10.0, 20.0], [11.0, 18.0]) == pytest.approx(10.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


# nas.latency profile ------------------------------------------------------------------------------
def test_profile_smoke_writes_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "device.json"
    assert latency_cli.main(["profile", "--space", "resnest", "--image-size", "16", "--smoke",
                             "--out", str(out)]) == 0
    table = load_table(out)
    assert (table.preset, table.image_size, table.settings.backend) == ("small", 16, "torch")
    assert len(table.fit) == 2 and len(table.validation["networks"]) == 3
    assert "MAPE" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--backend", "tvm"], "unknown latency backend 'tvm'"),
    (["--image-size", "0"], "--image-size must be positive"),
    (["--precision", "fp16"], "fp16 latency needs"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--fit", "0"], "--fit must be >= 1"),
    (["--out", "{TMP}/no/such/dir/t.json"], "does not exist or is not writable"),
    (["--out", "{TMP}"], "is a directory"),
    (["--threads", "x"], "invalid int value"),
])
def test_profile_bad_input_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    out = tmp_path / "t.json"
    base = {"--image-size": "16", "--out": str(out)}
    given = [a.replace("{TMP}", str(tmp_path)) for a in args]
    argv = ["profile", "--smoke", *given]
    for flag, value in base.items():
        if flag not in given:
            argv += [flag, value]
    assert _exit_code(latency_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_profile_without_onnxruntime_names_the_extra(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert latency_cli.main(["profile", "--smoke", "--image-size", "16", "--backend",
                             "onnxruntime", "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "[onnx] extra" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_costs_cli_takes_the_backend_and_names_a_missing_extra(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.costs import main as costs_main

    argv = ["resnest14d", "--image-size", "32", "--runs", "1", "--warmup", "0", "--json"]
    assert costs_main([*argv, "--latency-backend", "onnxruntime", "--threads", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["latency"]["backend"] == "onnxruntime" and record["latency_ms"] > 0
    assert record["latency"]["threads"] == 1 and record["latency"]["batch_size"] == 1
    assert costs_main([*argv, "--latency-backend", "tvm"]) == 2
    assert "unknown latency backend 'tvm'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert costs_main([*argv, "--latency-backend", "onnxruntime"]) == 2
    assert "[onnx] extra" in capsys.readouterr().err


def _exit_code(main, argv: list[str]) -> int:
    """A command's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


# The worker measures; the driver does not ---------------------------------------------------------
@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch):
    """`run_trial` in this process on one CPU thread; returns its reports."""

    def run(config: dict) -> list[dict]:
        reports: list[dict] = []
        with monkeypatch.context() as patch:
            patch.setattr(ray_runner, "assigned_resources", lambda: (1, "cpu"))
            ray_runner.run_trial(json.loads(json.dumps(config)), get_checkpoint=lambda: None,
                                 report=lambda metrics, **_: reports.append(metrics))
        return reports

    return run


TRIAL = {"spec": tiny_spec().to_json(), "image_size": 8, "train_fraction": 0.1,
         "batch_size": 32, "epochs": 1, "seed": 0}
LATENCY = {"backend": "torch", "batch_size": 1, "threads": None, "precision": "fp32",
           "warmup": 0, "runs": 1}


def _latency_trial(tmp_path: Path, **extra: object) -> dict:
    config = build_trial_config({**TRIAL, "trial_dir": str(tmp_path / "t0000")})
    return {**config.to_dict(), "latency": LATENCY, **extra}


def test_the_worker_measures_latency_before_training_and_records_it(worker, tmp_path: Path,
                                                                    ) -> None:
    reports = worker(_latency_trial(tmp_path))
    assert set(reports[0]) == {"latency_ms"} and reports[0]["latency_ms"] > 0
    assert [r["epoch"] for r in reports[1:]] == [1]  # then it trained
    recorded = json.loads((tmp_path / "t0000" / "latency.json").read_text())
    assert recorded["latency_ms"] == reports[0]["latency_ms"]
    assert recorded["settings"]["device"] == "cpu" and recorded["settings"]["threads"] == 1
    assert "median of 1 timed forwards" in recorded["definition"]


def test_a_worker_over_the_latency_limit_stops_untrained(worker, tmp_path: Path) -> None:
    (report,) = worker(_latency_trial(tmp_path, max_latency_ms=1e-9))
    assert report["infeasible"].startswith("latency_ms") and "max_latency_ms 1e-09" in \
        report["infeasible"]
    assert not (tmp_path / "t0000" / "checkpoint.pt").exists()  # nothing was trained


def test_a_retry_reuses_the_recorded_latency(tmp_path: Path) -> None:
    config = build_trial_config({**TRIAL, "trial_dir": str(tmp_path / "t0000")})
    config = type(config).from_dict({**config.to_dict(), "latency": LATENCY})
    first = trial_latency(config, "cpu", 1)
    assert trial_latency(config, "cpu", 1) == first
    assert latency_report(config, first) == {"latency_ms": first["latency_ms"]}


def test_a_measurement_waits_for_the_step_in_flight_and_holds_back_the_next(
        tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    training = TrainingGate(path)  # a training trial, in the middle of a step
    measured = threading.Event()

    def measure() -> None:
        with measurement_lock(path):
            measured.set()

    thread = threading.Thread(target=measure)
    thread.start()
    probe = os.open(path + ".gate", os.O_RDWR)
    for _ in range(10_000):  # until the measurement holds the gate (it then waits for the step)
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(probe, fcntl.LOCK_UN)
            time.sleep(0.001)
        except BlockingIOError:
            break
    else:
        raise AssertionError("the measurement never closed the gate")
    os.close(probe)
    assert not measured.is_set()  # the step in flight holds it back
    training.between_steps()  # the step ends: the next starts only after the measurement
    assert measured.is_set()
    thread.join()
    training.close()


def _config(**extra: object) -> ExperimentConfig:
    return ExperimentConfig(name="t", space="resnest", preset="small", data="digits",
                            image_size=16, objectives=("accuracy", "latency"), epochs=2,
                            trials=3, time_budget_s=300.0, sampler="random", pruner="none",
                            seed=0, storage="", **extra)


def test_the_driver_never_times_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("the driver timed a network")

    monkeypatch.setattr(LatencyBackend, "measure", refuse)
    config = _config(latency={"source": "worker", **LATENCY})
    costs = search_cli.cost_function(config)(tiny_spec())
    assert "latency_ms" not in costs and costs["macs"] > 0
    assert search_cli.worker_latency(config) == LATENCY


def test_the_controller_takes_the_workers_latency(tmp_path: Path) -> None:
    config = _config(latency={"source": "worker", **LATENCY},
                     constraints={"max_latency_ms": 5.0})
    objectives = parse_objectives("accuracy,latency")
    study = optuna.create_study(directions=[o.direction for o in objectives],
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.NopPruner())
    controller = SearchController(
        config, tmp_path, study, get_space("resnest"), objectives,
        lambda spec: {"macs": 1.0, "params": 1.0}, lambda tid, spec, c, r: {"trial_id": tid},
        log=lambda _: None)
    fast, _ = controller.next_trial()
    slow, _ = controller.next_trial()
    controller.on_result(fast, {"latency_ms": 2.5})
    controller.on_result(fast, {"epoch": 1, "val_top1": 0.5})
    controller.on_complete(fast, {"epoch": 2, "val_top1": 0.6})
    controller.on_result(slow, {"latency_ms": 9.0, "infeasible": "latency_ms 9 > 5"})
    controller.on_complete(slow, {"latency_ms": 9.0, "infeasible": "latency_ms 9 > 5"})
    records = controller.records
    assert records[fast].state == "COMPLETE" and records[fast].costs["latency_ms"] == 2.5
    assert records[slow].state == "INFEASIBLE" and records[slow].reason == "latency_ms 9 > 5"
    trials = {t.number: t for t in study.trials}
    assert trials[records[fast].number].values == [0.6, 2.5]
    assert trials[records[slow].number].user_attrs["latency_ms"] == 9.0
    assert trials[records[slow].number].user_attrs[VIOLATIONS_ATTR] == pytest.approx([0, 0.8])


# nas.search: bad latency input, refused before anything is written -------------------------------
@pytest.fixture(scope="module")
def table_file(slice_tables, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "slice.json"
    path.write_text(slice_tables["torch"].to_json())
    return path


@pytest.mark.parametrize("args,message", [
    (["--latency-backend", "tvm"], "unknown latency backend 'tvm'"),
    (["--latency-threads", "0"], "--latency-threads must be positive"),
    (["--objectives", "accuracy,macs", "--latency-backend", "torch"],
     "--latency-backend applies only when latency is an objective"),
    (["--latency-table", "{TMP}/missing.json"], "cannot read latency table"),
    (["--latency-table", "{NOT_A_TABLE}"], "is not a latency table"),
    (["--latency-table", "{TABLE}", "--latency-backend", "onnxruntime"],
     "--latency-backend onnxruntime differs from latency table"),
    (["--latency-table", "{TABLE}", "--image-size", "8"], "image size 16, not 8"),
    (["--latency-table", "{TABLE}", "--preset", "imagenet", "--image-size", "32"],
     "space preset small, not imagenet"),
    (["--latency-table", "{TABLE}", "--image-size", "16"], "lacks part "),
])
def test_search_refuses_bad_latency_input_before_writing(
        tmp_path: Path, table_file: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], message: str) -> None:
    not_a_table = tmp_path / "other.json"
    not_a_table.write_text('{"hello": 1}')
    given = [a.replace("{TMP}", str(tmp_path)).replace("{TABLE}", str(table_file))
             .replace("{NOT_A_TABLE}", str(not_a_table)) for a in args]
    argv = ["--smoke", "--data", "digits", "--out", str(tmp_path / "out"), "--name", "x",
            *(["--objectives", "accuracy,latency"] if "--objectives" not in given else []),
            *given]
    assert search_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_search_without_onnxruntime_names_the_extra(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert search_cli.main(["--smoke", "--data", "digits", "--objectives", "accuracy,latency",
                            "--latency-backend", "onnxruntime", "--out",
                            str(tmp_path / "out")]) == 2
    assert "[onnx] extra" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,fresh,stored", [
    ("--latency-backend", {"backend": "onnxruntime"}, {"backend": "torch"}),
    ("--latency-threads", {"threads": 2}, {"threads": None}),
    ("--latency-table", {"table": "/b.json"}, {"table": "/a.json"}),
])
def test_resume_refuses_other_latency_settings(flag: str, fresh: dict, stored: dict) -> None:
    dest = flag[2:].replace("-", "_")
    with pytest.raises(UserError, match=f"{flag} gives"):
        search_cli.check_resume_flags(Path("exp"), _config(latency=stored),
                                      _config(latency=fresh), {dest})


def test_networks_sampled_for_a_table_are_distinct_and_fit(small_space) -> None:
    specs = sample_networks(small_space, 20, 0, 10, 1, 16)
    assert len({s.spec_hash for s in specs}) == 20
    assert all(s.min_image_size <= 16 and s.num_classes == 10 for s in specs)


def test_a_part_builds_the_module_its_key_names() -> None:
    part = Part("head", (64, 10), (64, 2, 2))
    assert part.key == "head(64,10)@2px"
    assert tuple(part.build()(torch.randn(1, 64, 2, 2)).shape) == (1, 10)


@pytest.mark.slow  # a real search on a local Ray
def test_a_search_takes_latency_on_its_workers(tmp_path: Path) -> None:
    import subprocess

    from nas.experiment import read_trials_csv

    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.search", "--smoke", "--data", "digits", "--objectives",
         "accuracy,latency", "--trials", "2", "--epochs", "1", "--concurrency", "1",
         "--time-budget", "15m", "--out", str(tmp_path), "--name", "lat"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    exp = tmp_path / "lat"
    stored = json.loads((exp / "experiment.json").read_text())["latency"]
    assert stored["source"] == "worker" and stored["backend"] == "torch"
    assert "measured on each trial's worker" in stored["definition"]
    trained = [r for r in read_trials_csv(exp) if r.state != "INFEASIBLE"]
    assert len(trained) == 2
    for record in trained:
        taken = json.loads((exp / "trials" / record.trial_id / "latency.json").read_text())
        assert taken["pid"] != proc.pid  # the worker's process, not the driver's
        assert record.costs["latency_ms"] == taken["latency_ms"]
        assert taken["settings"]["device"] == "cpu" and taken["settings"]["threads"] == 1

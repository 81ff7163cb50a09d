"""nas.export: picks, files, fresh-process and onnxruntime verification, and every bad input."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import nas
from analysis.front import knee, pareto_front
from analysis.load import load
from nas.export import cli as ex
from nas.export import verify as export_verify
from nas.export.codegen import generate_source, network_source
from nas.export.verify import import_file
from nas.models import network
from search_spaces import ArchSpec, StageSpec, get_space, list_named_points, list_spaces
from search_spaces.block_plan import BlockArgs, block_plan
from search_spaces.errors import UserError
from search_spaces.registry import SpecLike, resolve_spec
from search_spaces.spec import EXPANSION
from trials.training import load_checkpoint

STDLIB_IMPORTS = {"__future__", "json", "struct", "pathlib"}


def run_export(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = ex.main([str(a) for a in args])
    except SystemExit as stop:  # argparse usage errors
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, message: str, out_dir: Path, rc: int = 2) -> None:
    """One clear line on stderr, the expected exit code, and nothing written."""
    assert code == rc, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.fixture(scope="module")
def df(small_experiment: Path) -> pd.DataFrame:
    return load(small_experiment)


@pytest.fixture(scope="module")
def exported(small_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One full export (with ONNX) of the most accurate trial, shared by the file checks."""
    out = tmp_path_factory.mktemp("export") / "model"
    assert ex.main([str(small_experiment), "--pick", "accuracy", "--out", str(out), "--onnx",
                    "--name", "picked"]) == 0
    return {p.suffix[1:]: p for p in out.iterdir()}


def best_trial(df: pd.DataFrame) -> pd.Series:
    done = df[df["state"] == "COMPLETE"]
    return done.loc[done["accuracy"].idxmax()]


# Files ----------------------------------------------------------------------------------------
def test_export_writes_module_weights_metadata_and_onnx(exported: dict[str, Path],
                                                        df: pd.DataFrame,
                                                        small_experiment: Path) -> None:
    assert sorted(exported) == ["json", "onnx", "py", "safetensors"]
    meta = json.loads(exported["json"].read_text())
    row = best_trial(df)
    assert meta["trial"]["trial_id"] == row["trial_id"] and meta["trial"]["partial"] is False
    assert ArchSpec.from_dict(meta["spec"]) == ArchSpec.from_json(row["spec"])
    assert meta["tag"] == row["tag"] and meta["spec_hash"] == row["spec_hash"]
    assert meta["costs"]["macs"] == row["macs"] and meta["costs"]["params"] == row["params"]
    assert meta["metrics"]["accuracy"] == pytest.approx(row["accuracy"])
    assert len(meta["metrics"]["curve"]) == row["epochs"]
    data = load_checkpoint(small_experiment / "trials" / row["trial_id"])["data"]
    assert meta["dataset"]["data"] == "digits" and meta["dataset"]["num_classes"] == 10
    prep = meta["preprocessing"]
    assert (prep["mean"], prep["std"], prep["image_size"]) == (data["mean"], data["std"],
                                                               data["image_size"])
    assert meta["costs"]["image_size"] == data["image_size"]
    check = meta["verification"]
    assert check["max_abs_diff"] <= 1e-5 and check["onnx_max_abs_diff"] <= 1e-4
    assert check["features_max_abs_diff"] <= 1e-5
    model = nas.build_model(ArchSpec.from_dict(meta["spec"]))
    assert check["params"] == sum(p.numel() for p in model.parameters())
    assert meta["selection"] == {"pick": "accuracy", "objectives": ["accuracy", "macs"],
                                 "constraints": {}}


def test_module_imports_only_torch_and_the_standard_library(exported: dict[str, Path]) -> None:
    assert _import_roots(exported["py"].read_text()) == {"torch"} | STDLIB_IMPORTS


def test_weights_are_the_checkpoint_weights(exported: dict[str, Path], df: pd.DataFrame,
                                            small_experiment: Path) -> None:
    state = load_checkpoint(small_experiment / "trials" / best_trial(df)["trial_id"])["model"]
    weights = load_file(str(exported["safetensors"]))
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)
    own = import_file(exported["py"]).load_safetensors(exported["safetensors"])  # torch-only reader
    assert all(torch.equal(own[k], state[k]) and own[k].dtype == state[k].dtype for k in state)


def test_fresh_process_without_project_matches_build_model(exported: dict[str, Path],
                                                           tmp_path: Path) -> None:
    """Independent of the exporter's own check: import in `python -I` from an empty cwd with
    PYTHONPATH unset and the project's packages refused; compare with nas.build_model."""
    meta = json.loads(exported["json"].read_text())
    spec = ArchSpec.from_dict(meta["spec"])
    size = meta["preprocessing"]["image_size"]
    x = torch.randn(3, spec.in_channels, size, size, generator=torch.Generator().manual_seed(7))
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import importlib.abc, json, sys\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'nas', 'search_spaces', 'trials', 'analysis'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"sys.path.insert(0, {str(exported['py'].parent)!r})\n"
        "import torch, picked\n"
        "model = picked.build(pretrained=True).eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.load('x.pt')), 'y.pt')\n"
        "print(sum(p.numel() for p in model.parameters()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-B", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    model = nas.build_model(spec)
    model.load_state_dict(load_file(str(exported["safetensors"])), strict=True)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    assert int(done.stdout.strip()) == sum(p.numel() for p in model.parameters())
    assert (torch.load(tmp_path / "y.pt") - reference).abs().max().item() <= 1e-5


def test_onnx_runs_in_onnxruntime_with_any_batch(exported: dict[str, Path]) -> None:
    import onnxruntime

    meta = json.loads(exported["json"].read_text())
    spec = ArchSpec.from_dict(meta["spec"])
    size = meta["preprocessing"]["image_size"]
    x = torch.randn(5, spec.in_channels, size, size, generator=torch.Generator().manual_seed(3))
    model = nas.build_model(spec)
    model.load_state_dict(load_file(str(exported["safetensors"])))
    with torch.no_grad():
        reference = model.eval()(x)
    session = onnxruntime.InferenceSession(str(exported["onnx"]),
                                           providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert (torch.from_numpy(out) - reference).abs().max().item() <= 1e-4


def test_module_builds_other_class_counts_from_the_trained_backbone(
        exported: dict[str, Path]) -> None:
    module = import_file(exported["py"])
    trained = module.build(pretrained=True)
    head3 = module.build(num_classes=3, pretrained=True)
    assert head3.fc.out_features == 3
    assert torch.equal(head3.layer1[0].conv1.weight, trained.layer1[0].conv1.weight)
    assert module.build().fc.out_features == module.NUM_CLASSES
    images = torch.randint(0, 256, (2, module.IN_CHANNELS, 20, 20), dtype=torch.uint8)
    assert module.preprocess(images).shape[-1] == module.IMAGE_SIZE


# Code generation -------------------------------------------------------------------------------
def _spec(stages: list[tuple[int, int, int, int]], **kw: Any) -> ArchSpec:
    base = {"stem_width": 8, "base_planes": 16, "attn_min_width": 8, "num_classes": 7,
            "in_channels": 3, "input_regime": "small"}
    return ArchSpec(stages=tuple(StageSpec(*s) for s in stages), **{**base, **kw})


def _conv_weights(spec: ArchSpec) -> int:
    """The blocks' 1x1 and 3x3 conv weights: most of a network's size, torch-free."""
    return sum(b.in_channels * b.group_width + b.group_width ** 2 * 9 * max(b.radix, 1)
               // b.cardinality + b.group_width * b.planes * 4
               for stage in block_plan(spec) for b in stage)


def _small_samples(space: str, n: int = 3, among: int = 10) -> list[ArchSpec]:
    """The n smallest of the first seeded samples (ImageNet-preset samples reach 1B parameters)."""
    specs = [get_space(space).sample(np.random.default_rng(seed)) for seed in range(among)]
    return sorted(specs, key=_conv_weights)[:n]


CODEGEN_SPECS: dict[str, SpecLike] = {
    "radix2": _spec([(1, 2, 1, 16)] * 3),
    "radix1-only-grouped": _spec([(2, 1, 2, 16)] * 2, avd_first=True),
    "plain-only": _spec([(1, 0, 4, 16)] * 3, stem="plain", avg_down=False, avd=False),
    "mixed": _spec([(1, 0, 1, 8), (1, 4, 1, 16), (2, 1, 2, 8), (1, 2, 2, 16)], dropout=0.2),
    "imagenet-plain-stem": _spec([(1, 2, 2, 16)] * 2, stem="plain", input_regime="imagenet"),
    "imagenet-deep-no-avd": _spec([(2, 4, 1, 16)] * 2, input_regime="imagenet", avd=False),
    **{name: name for name in list_named_points()},
    # A few seeded samples of each preset ("resnest" and "resnest-small" share one preset).
    **{f"{space}-{spec.spec_hash}": spec
       for space in {get_space(n).preset.name: n for n in list_spaces()}.values()
       for spec in _small_samples(space)},
}
PREPROCESSING = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def _import_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    return roots


def _randomize_bn(model: torch.nn.Module) -> None:
    """Random BN statistics and affines (zero-initialized BNs would hide every residual branch);
    the last BN of each branch stays small so outputs stay O(1) even 50 blocks deep."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                scale = 0.3 if name.endswith(("bn3", "downsample.1", "downsample.2")) else 1.0
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * scale + 0.5 * scale)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small inputs gain nothing from a second thread on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_generated_source_embeds_the_network_module_verbatim() -> None:
    """One implementation: the export is the builder's own network file after its own header
    (so a change to the builder is a change to every export), cut only of its docstring and
    `from __future__` line."""
    body = network_source()
    full = inspect.getsource(network)
    assert full.endswith(body) and len(body) > len(full) // 2
    cut = ast.parse(full[:-len(body)]).body
    assert [type(node) for node in cut] == [ast.Expr, ast.ImportFrom]  # docstring, __future__
    assert _import_roots(full) == {"__future__", "torch"}
    source = generate_source(resolve_spec("resnest14d"), weights_file="w.safetensors",
                             preprocessing=PREPROCESSING)
    assert source.count(body) == 1
    assert source.index(body) < source.index("PLAN = (")


def test_network_takes_the_block_plan_as_plain_rows() -> None:
    """The torch-only network and the torch-free plan agree on the row layout and constants."""
    assert tuple(inspect.signature(network.Bottleneck).parameters) == BlockArgs._fields
    assert len(network.BlockRow.__args__) == len(BlockArgs._fields)
    assert network.EXPANSION == EXPANSION
    too_deep = (((64, 16, 16, 0, 0, 1, 1, False, False, False),),) * (network.MAX_STAGES + 1)
    with pytest.raises(ValueError, match="plan needs 1 to 6 stages"):
        network.ResNeSt("plain", 8, 3, "small", too_deep, 0.0, 10)


@pytest.mark.parametrize("key", list(CODEGEN_SPECS))
def test_generated_module_equals_build_model(key: str, tmp_path: Path, one_thread: None) -> None:
    """Every named point and sampled spec: the same seed gives the same weights (init order), and
    with random BN weights and statistics the same outputs, bit for bit; the module imports only
    torch and the standard library and passes the project's lint rules."""
    spec = resolve_spec(CODEGEN_SPECS[key])
    source = generate_source(spec, weights_file="w.safetensors", provenance="test",
                             preprocessing=PREPROCESSING)
    assert _import_roots(source) <= {"torch"} | STDLIB_IMPORTS
    path = tmp_path / f"gen_{key.replace('-', '_')}.py"
    path.write_text(source)
    module = import_file(path)
    torch.manual_seed(0)
    reference = nas.build_model(spec).eval()
    torch.manual_seed(0)
    model = module.build().eval()
    theirs, ours = reference.state_dict(), model.state_dict()
    assert list(theirs) == list(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    _randomize_bn(reference)
    model.load_state_dict(reference.state_dict(), strict=True)
    size = max(16, spec.min_image_size)
    x = torch.randn(2, spec.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, reference(x)) and out.shape == (2, spec.num_classes)
    assert out.abs().max() > 0.05 and torch.isfinite(out).all()  # a real comparison
    ruff = shutil.which("ruff")
    if ruff:  # readable: the generated module passes the project's own lint rules
        lint = subprocess.run([ruff, "check", "--isolated", "--no-cache", "--line-length", "100",
                               "--select", "E,F,I,B,UP,W", str(path)], capture_output=True,
                              text=True)
        assert lint.returncode == 0, lint.stdout


# Picks ----------------------------------------------------------------------------------------
def objectives() -> Any:
    from analysis.front import as_objectives

    return as_objectives("accuracy,macs")


def test_picks_accuracy_cheapest_and_knee(df: pd.DataFrame, small_experiment: Path) -> None:
    done = df[df["state"] == "COMPLETE"]

    def pick(how: str, **c: float) -> str:
        return ex.pick(df, how, objectives(), c, small_experiment)["trial_id"]

    assert pick("accuracy") == done.loc[done["accuracy"].idxmax(), "trial_id"]
    assert pick("cheapest") == done.loc[done["macs"].idxmin(), "trial_id"]
    front = pareto_front(df, "accuracy,macs")
    assert pick("knee") == front.loc[knee(front, "accuracy,macs"), "trial_id"]
    assert pick("knee") in set(front["trial_id"])
    best = done.loc[done["accuracy"].idxmax()]
    below = done[done["macs"] < best["macs"]]
    assert pick("accuracy", max_macs=best["macs"] - 1) == \
        below.loc[below["accuracy"].idxmax(), "trial_id"]
    cheap = done.loc[done["macs"].idxmin()]
    better = done[done["accuracy"] >= best["accuracy"]]
    assert pick("cheapest", min_accuracy=best["accuracy"]) == \
        better.loc[better["macs"].idxmin(), "trial_id"]
    assert pick("cheapest", max_params=cheap["params"]) == cheap["trial_id"]


def test_pick_knee_with_constraint_through_the_cli(small_experiment: Path, df: pd.DataFrame,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    limit = float(df[df["state"] == "COMPLETE"]["macs"].max()) - 1  # excludes the costliest
    code, out, err = run_export([small_experiment, "--pick", "knee", "--max-macs", limit,
                                 "--out", tmp_path / "knee"], capsys)
    assert code == 0, err
    meta = json.loads(next((tmp_path / "knee").glob("*.json")).read_text())
    candidates = df[(df["state"] == "COMPLETE") & (df["macs"] <= limit)]
    front = pareto_front(candidates, "accuracy,macs")
    assert meta["trial"]["trial_id"] == front.loc[knee(front, "accuracy,macs"), "trial_id"]
    assert meta["selection"]["constraints"] == {"max_macs": limit}
    assert meta["trial"]["trial_id"] in out


def test_allow_partial_exports_the_last_checkpoint(small_experiment: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_export([small_experiment, "--trial", "t0005", "--allow-partial", "--out",
                               tmp_path, "--name", "partial"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "partial.json").read_text())
    trial = meta["trial"]
    assert (trial["trial_id"], trial["state"], trial["partial"]) == ("t0005", "PRUNED", True)
    assert trial["checkpoint_epoch"] == 1 and meta["metrics"]["epochs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.json", "partial.py",
                                                          "partial.safetensors"]


def test_force_overwrites_existing_outputs(small_experiment: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.json").write_text("keep")
    code, _, err = run_export([small_experiment, "--trial", "t0002", "--out", tmp_path,
                               "--name", "m"], capsys)
    assert code == 2 and "m.json already exist" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert (tmp_path / "m.json").read_text() == "keep"
    code, _, err = run_export([small_experiment, "--trial", "t0002", "--out", tmp_path,
                               "--name", "m", "--force"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["trial"]["trial_id"] == "t0002"


# Verification failures: loud, and nothing written ------------------------------------------------
def test_wrong_module_outputs_fail_and_write_nothing(small_experiment: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ex, "generate_source", lambda *a, **k: generate_source(*a, **k).replace(
        "return x if pre_logits else self.fc(x)",
        "return x if pre_logits else self.fc(x) * 1.001"))
    code, _, err = run_export([small_experiment, "--trial", "t0001", "--out",
                               tmp_path / "out"], capsys)
    assert_refused(code, err, "outputs differ from the searched model", tmp_path / "out", rc=1)


def test_wrong_backbone_maps_fail_and_write_nothing(small_experiment: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The classifier is right, the features_only backbone is not: still refused."""
    monkeypatch.setattr(ex, "generate_source", lambda *a, **k: generate_source(*a, **k).replace(
        "features = [x] if 0 in self.out_indices else []",
        "features = [x * 1.001] if 0 in self.out_indices else []"))
    code, _, err = run_export([small_experiment, "--trial", "t0001", "--out",
                               tmp_path / "out"], capsys)
    assert_refused(code, err, "the features_only backbone's maps differ from the searched model",
                   tmp_path / "out", rc=1)


def test_module_importing_the_project_fails_verification(
        small_experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ex, "generate_source", lambda *a, **k: generate_source(*a, **k).replace(
        "import torch\n", "import torch\nimport search_spaces  # noqa\n", 1))
    code, _, err = run_export([small_experiment, "--trial", "t0001", "--out",
                               tmp_path / "out"], capsys)
    assert_refused(code, err, "tried to import search_spaces", tmp_path / "out", rc=1)


def test_onnx_mismatch_fails_and_writes_nothing(small_experiment: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    real = export_verify.run_onnx
    monkeypatch.setattr(export_verify, "run_onnx", lambda *a: real(*a) + 1e-3)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_export([small_experiment, "--trial", "t0002", "--out", out, "--onnx"],
                              capsys)
    assert_refused(code, err, "ONNX outputs differ", out, rc=1)


# Bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--trial", "t9999"], "unknown trial id 't9999'"),
    (["--trial", "t0005"], "t0005 is PRUNED (pruned at epoch 1 by pareto): it has no "
                           "full-budget weights; --allow-partial would export its last "
                           "checkpoint (epoch 1)"),
    (["--trial", "t0006"], "t0006 is FAIL"),
    (["--trial", "t0006", "--allow-partial"], "has no checkpoint"),
    (["--pick", "accuracy", "--max-macs", "10"], "no completed trial satisfies --max-macs 10: "
                                                 "the lowest macs"),
    (["--pick", "knee", "--min-accuracy", "0.999"], "satisfies --min-accuracy 0.999: the highest"),
    (["--pick", "cheapest", "--max-latency-ms", "5"], "no trial has latency_ms measured"),
    (["--pick", "cheapest", "--max-params", "-1"], "--max-params must be positive"),
    (["--trial", "t0001", "--max-macs", "1e9"], "do not apply to --trial"),
    (["--trial", "t0001", "--name", "bad-name"], "must be a Python identifier"),
    (["--trial", "t0001", "--pick", "knee"], "not allowed with argument"),
    (["--pick", "best"], "invalid choice: 'best'"),
    ([], "one of the arguments --trial --pick is required"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        small_experiment: Path, tmp_path: Path, args: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_export([small_experiment, *args, "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, message, tmp_path / "out")


def test_onnx_without_the_extra_names_it(small_experiment: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a missing package looks like
    code, _, err = run_export([small_experiment, "--trial", "t0001", "--out", tmp_path / "out",
                               "--onnx"], capsys)
    assert_refused(code, err, "--onnx needs onnx and onnxruntime to write and verify the file "
                              "(onnxruntime is missing): pip install 'resnest-nas[onnx]'",
                   tmp_path / "out")


def test_module_builds_a_features_only_backbone(exported: dict[str, Path]) -> None:
    """The exported trial as a backbone: the stage outputs its feature_info describes."""
    module = import_file(exported["py"])
    backbone = module.build(pretrained=True, features_only=True).eval()
    classifier = module.build(pretrained=True).eval()
    info = backbone.feature_info
    assert info.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(2, module.IN_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = backbone(x)
        assert torch.equal(maps[-1], classifier.forward_features(x))
        assert torch.equal(classifier.forward_head(maps[-1]), classifier(x))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 16 // r, 16 // r) for c, r in
                                                  zip(info.channels(), info.reduction(),
                                                      strict=True)]


def test_constraints_that_only_conflict_together(small_experiment: Path, df: pd.DataFrame,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    done = df[df["state"] == "COMPLETE"]
    cheapest, best = done.loc[done["macs"].idxmin()], done.loc[done["accuracy"].idxmax()]
    assert cheapest["trial_id"] != best["trial_id"]
    code, _, err = run_export([small_experiment, "--pick", "accuracy", "--max-macs",
                               cheapest["macs"], "--min-accuracy", best["accuracy"], "--out",
                               tmp_path / "out"], capsys)
    assert_refused(code, err, "together (each alone is met by some trial)", tmp_path / "out")


def test_not_an_experiment_and_unwritable_output(tmp_path: Path, small_experiment: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_export([tmp_path, "--pick", "knee", "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, "is not an experiment", tmp_path / "out")
    (tmp_path / "file").write_text("")
    code, _, err = run_export([small_experiment, "--trial", "t0001", "--out",
                               tmp_path / "file"], capsys)
    assert code == 2 and "exists and is not a directory" in err


def test_no_completed_trial_to_pick(small_experiment: Path, df: pd.DataFrame) -> None:
    unfinished = df[df["state"] != "COMPLETE"]
    with pytest.raises(UserError, match=r"no completed trial to pick from .*1 PRUNED, 1 FAIL"):
        ex.pick(unfinished, "knee", objectives(), {}, small_experiment)


def test_cli_entry_point_prints_one_line(small_experiment: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nas.export", str(small_experiment), "--trial",
                           "nope", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "unknown trial id 'nope'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_exports_from_the_real_search(searched_experiment: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_export([searched_experiment, "--pick", "knee", "--out", tmp_path,
                               "--onnx", "--name", "knee"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "knee.json").read_text())
    assert meta["verification"]["max_abs_diff"] <= 1e-5
    assert meta["verification"]["onnx_max_abs_diff"] <= 1e-4
    assert meta["preprocessing"]["image_size"] == 8
    assert meta["dataset"]["data"] == "fashion-mnist-subset"

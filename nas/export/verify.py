"""Checks that an exported module (and ONNX file) computes what the searched model computes.

The module is imported in a fresh interpreter (`python -E`: PYTHONPATH and other PYTHON* variables
ignored; started in an empty directory) whose sys.path holds no directory of this project and whose
import system refuses this project's packages (an editable install would otherwise still find
them), so an export that secretly depends on `nas` or `search_spaces` fails here instead of on the
user's machine. Not `-I`: that also drops the user site, where torch may live. The module is
checked both ways it is used: as the classifier and as a `features_only` backbone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from nas.models.builder import build_model, load_weights
from search_spaces.spec import ArchSpec

OUTPUT_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4
VERIFY_BATCH = 2
VERIFY_SEED = 0
PROJECT_PACKAGES = ("nas", "search_spaces", "trials", "analysis")
TIMEOUT_S = 300

# Runs in the fresh interpreter: argv = module directory, module name, io directory.
FRESH_PROCESS = """
import importlib.abc, json, os, sys
BLOCKED = set(sys.argv[4].split(","))

class RefuseProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the exported module tried to import {name} from resnest-nas")
        return None

sys.meta_path.insert(0, RefuseProject())
sys.path = [p for p in sys.path  # drop the project's root (marker: search_spaces/spec.py)
            if not os.path.isfile(os.path.join(p or ".", "search_spaces", "spec.py"))]
directory, name, io = sys.argv[1:4]
sys.path.insert(0, directory)
import torch
module = __import__(name)
model = module.build(pretrained=True).eval()
backbone = module.build(pretrained=True, features_only=True).eval()
x = torch.load(io + "/input.pt", weights_only=True)
with torch.no_grad():
    torch.save(model(x), io + "/output.pt")
    torch.save(backbone(x), io + "/features.pt")
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "file": module.__file__,
                  "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


class VerificationError(Exception):
    """The exported files do not reproduce the searched model: the export must not be used."""


def reference_features(spec: ArchSpec, weights: dict[str, torch.Tensor],
                       x: torch.Tensor) -> list[torch.Tensor]:
    """Every feature map of `build_model(features_only=True)` with the weights, for input `x`."""
    model = build_model(spec, features_only=True)
    load_weights(model, weights)
    with torch.no_grad():
        return model.eval()(x)


def reference_outputs(spec: ArchSpec, weights: dict[str, torch.Tensor],
                      image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(seeded input, `build_model` logits with the weights, parameter count)."""
    model = build_model(spec)
    model.load_state_dict(weights, strict=True)
    model.eval()
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    x = torch.randn(VERIFY_BATCH, spec.in_channels, image_size, image_size, generator=generator)
    with torch.no_grad():
        out = model(x)
    return x, out, sum(p.numel() for p in model.parameters())


def verify_module(module_file: Path, x: torch.Tensor, reference: torch.Tensor, params: int,
                  workdir: Path, features: list[torch.Tensor]) -> dict[str, Any]:
    """Import `module_file` in a fresh, project-free interpreter; compare params, outputs and
    (as a `features_only` backbone) every feature map."""
    io = workdir / "io"
    io.mkdir()
    torch.save(x, io / "input.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    command = [sys.executable, "-E", "-B", "-c", FRESH_PROCESS, str(module_file.parent),
               module_file.stem, str(io), ",".join(PROJECT_PACKAGES)]
    try:
        done = subprocess.run(command, cwd=io, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"importing the module took over {TIMEOUT_S}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerificationError(f"the module failed in a fresh interpreter: {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["project_modules"]:
        raise VerificationError(f"the module imported {', '.join(result['project_modules'])}")
    if Path(result["file"]).resolve() != module_file.resolve():
        raise VerificationError(f"the fresh interpreter imported {result['file']}, not the export")
    if result["params"] != params:
        raise VerificationError(f"parameter count {result['params']} differs from the searched "
                                f"model's {params}")
    out = torch.load(io / "output.pt", weights_only=True)
    diff = (out - reference).abs().max().item() if out.shape == reference.shape else float("inf")
    if not diff <= OUTPUT_TOLERANCE:
        raise VerificationError(f"outputs differ from the searched model by {diff:.3g} "
                                f"(tolerance {OUTPUT_TOLERANCE:g})")
    maps = torch.load(io / "features.pt", weights_only=True)
    shapes = [tuple(m.shape) for m in maps] == [tuple(f.shape) for f in features]
    feature_diff = (max((a - b).abs().max().item() for a, b in zip(maps, features, strict=True))
                    if shapes else float("inf"))
    if not feature_diff <= OUTPUT_TOLERANCE:
        raise VerificationError(f"the features_only backbone's maps differ from the searched "
                                f"model's by {feature_diff:.3g} (tolerance {OUTPUT_TOLERANCE:g})")
    return {"params": params, "max_abs_diff": diff, "tolerance": OUTPUT_TOLERANCE,
            "features_max_abs_diff": feature_diff,
            "input": f"randn{tuple(x.shape)} seed {VERIFY_SEED}",
            "fresh_process": "python -E in an empty directory, project packages refused"}


def import_file(path: Path) -> Any:
    """Import a Python file as a module in this process (not registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"_nas_export_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """TorchScript-based exporter (deprecated since torch 2.9): much faster than the dynamo one
    on these models and exact for them. Batch size is dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime  # optional (a test extra): only --onnx needs it, and the CLI checks first

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def verify_onnx(module_file: Path, onnx_file: Path, x: torch.Tensor,
                reference: torch.Tensor) -> dict[str, Any]:
    """Export the generated module's model to ONNX and compare onnxruntime's outputs."""
    model = import_file(module_file).build(pretrained=True).eval()
    try:
        export_onnx(model, x, onnx_file)
    except Exception as err:  # the exporter raises many types
        raise VerificationError(f"ONNX export failed: {str(err).splitlines()[0]}") from None
    out = run_onnx(onnx_file, x)
    diff = (out - reference).abs().max().item() if out.shape == reference.shape else float("inf")
    if not diff <= ONNX_TOLERANCE:
        raise VerificationError(f"ONNX outputs differ from the searched model by {diff:.3g} "
                                f"(tolerance {ONNX_TOLERANCE:g})")
    return {"onnx_max_abs_diff": diff, "onnx_tolerance": ONNX_TOLERANCE,
            "onnx_runtime": "onnxruntime CPUExecutionProvider"}

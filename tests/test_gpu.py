"""The GPU code paths against the CPU, for a machine with CUDA: `python -m pytest -m gpu
tests/test_gpu.py`. Every test here skips without CUDA, so the CPU suite passes over them.

What they pin: models give the CPU's logits on the GPU (fp32 with TF32 off, NCHW and
channels_last; bf16 autocast within a looser bound); the generated standalone module matches
the builder there; a trial trains on the GPU with the CUDA defaults (bf16, channels_last) and
its checkpoint resumes on the CPU; `measure_costs` times a network on the GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas.export.codegen import generate_source
from nas.export.verify import import_file
from nas.models.builder import build_model
from nas.models.costs import measure_costs
from search_spaces import ArchSpec, get_space, list_named_points, list_spaces, named_point
from trials.trial import Trial
from trials.trial_config import build_trial_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = torch.device("cuda")
FP32_TOL = 1e-3  # relative to the logits' scale
BF16_TOL = 0.1
# Every registered space's seeded sample and every named point.
SPECS: dict[str, ArchSpec] = {
    **{f"{name}:0": get_space(name).sample(np.random.default_rng(0)) for name in list_spaces()},
    **{name: named_point(name) for name in list_named_points()},
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest magnitude of the reference `b`."""
    diff = (a.float().cpu() - b.float().cpu()).abs().max()
    return (diff / b.float().cpu().abs().max().clamp_min(1e-6)).item()


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on the GPU, so fp32 logits can match the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name", list(SPECS))
def test_logits_match_cpu(name: str) -> None:
    spec = SPECS[name]
    size = max(32, spec.min_image_size)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(4, spec.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        gpu = model.to(DEVICE)
        nchw = rel_err(gpu(x.to(DEVICE)), ref)
        gpu = gpu.to(memory_format=torch.channels_last)
        x_cl = x.to(DEVICE).contiguous(memory_format=torch.channels_last)
        channels_last = rel_err(gpu(x_cl), ref)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            bf16 = rel_err(gpu(x_cl), ref)
    assert nchw < FP32_TOL, f"fp32 NCHW differs by {nchw:.1e} at {size} px"
    assert channels_last < FP32_TOL, f"fp32 channels_last differs by {channels_last:.1e}"
    assert bf16 < BF16_TOL, f"bf16 channels_last differs by {bf16:.1e}"


def test_exported_module_matches_builder(tmp_path: Path) -> None:
    spec = get_space(list_spaces()[0]).sample(np.random.default_rng(3))
    torch.manual_seed(0)
    model = build_model(spec).eval().to(DEVICE)
    source = generate_source(spec, weights_file="w.safetensors",
                             preprocessing={"image_size": 32, "mean": [0.5] * spec.in_channels,
                                            "std": [0.25] * spec.in_channels})
    path = tmp_path / "exported.py"
    path.write_text(source)
    exported = import_file(path).build(num_classes=spec.num_classes).eval().to(DEVICE)
    exported.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, spec.in_channels, 32, 32, device=DEVICE)
    with torch.no_grad():
        err = rel_err(exported(x), model(x))
    assert err < FP32_TOL, f"{spec.tag}: the exported module differs by {err:.1e} on the GPU"


TRIAL_CONFIG: dict[str, Any] = {"spec": "resnest:0", "device": DEVICE.type, "epochs": 4,
                                "image_size": 16}


@pytest.fixture(scope="module")
def gpu_trial() -> tuple[Trial, list[dict[str, Any]]]:
    """A 4-epoch digits trial on the GPU after its first 3 epochs, with their records."""
    trial = Trial(build_trial_config(TRIAL_CONFIG))
    return trial, list(itertools.islice(trial.run(), 3))


def test_gpu_trial_learns_digits_with_cuda_defaults(
        gpu_trial: tuple[Trial, list[dict[str, Any]]]) -> None:
    trial, curve = gpu_trial
    assert trial.trainer.amp and trial.trainer.channels_last  # bf16 autocast, channels_last
    assert curve[-1]["val_top1"] > 0.5, [round(r["val_top1"], 3) for r in curve]


def test_gpu_checkpoint_resumes_on_cpu(gpu_trial: tuple[Trial, list[dict[str, Any]]]) -> None:
    trial, _ = gpu_trial
    resumed = Trial(build_trial_config({**TRIAL_CONFIG, "device": "cpu"}),
                    checkpoint=trial.state_dict())
    assert resumed.trainer.epoch == 3
    record = next(resumed.run())
    assert record["epoch"] == 4 and record["val_top1"] > 0.5, record


def test_measure_costs_on_gpu() -> None:
    record = measure_costs("resnest14d", image_size=64, device=DEVICE.type)
    assert record.latency_ms > 0 and record.peak_memory_bytes > 0, record

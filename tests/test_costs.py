"""Cost model: published MACs/params, exactness of the per-part composition against whole models
and real CPU tensors, FlopCounterMode agreement, monotonicity, caching, CUDA-free measurement and
the CLI's handling of bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas import CostRecord, build_model, measure_costs, static_costs
from nas.costs import main
from nas.models.costs import _meta_modules, _static, _Tracker, whole_model_costs
from search_spaces import ArchSpec, SpecError, StageSpec, UserError, get_space, list_spaces


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small inputs gain nothing from a second thread, and on a shared 2-core machine OpenMP
    threads wait for each other at every op (a 64 px ResNeSt-269 forward: 0.3 s on one thread,
    15 s on two while other jobs ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The reference's published MACs (the paper's "GFLOPs") and timm parameter counts.
PUBLISHED = [
    ("resnest50d", 224, 5.39e9, 27_483_240),
    ("resnest101e", 256, 13.4e9, 48_275_016),
    ("resnest200e", 320, 35.7e9, 70_201_544),
    ("resnest269e", 416, 77.7e9, 110_929_480),
    ("resnet50d", 224, 4.34e9, 25_576_264),
    ("resnest50_fast_1s1x64d", 224, 4.34e9, None),
    ("resnest50_fast_2s2x40d", 224, 4.38e9, None),
    ("resnest50d_4s2x40d", 224, 4.41e9, 30_417_592),
    ("resnest50d_1s4x24d", 224, 4.42e9, 25_677_000),
]


def _small_spec(**kw: object) -> ArchSpec:
    base = dict(stages=(StageSpec(1, 2, 2, 16), StageSpec(1, 0, 2, 16), StageSpec(2, 4, 1, 16)),
                base_planes=16, stem_width=8, input_regime="small", in_channels=1, num_classes=10)
    return ArchSpec(**{**base, **kw})


@pytest.mark.parametrize("name,size,macs,params", PUBLISHED)
def test_published_macs_and_params(name: str, size: int, macs: float, params: int | None) -> None:
    record = static_costs(name, image_size=size)
    # The paper's counts include a little more than convs + matmuls (<1% here).
    assert record.macs == pytest.approx(macs, rel=0.01)
    if params is not None:
        assert record.params == params
    assert record.image_size == size and record.device == "meta"


def _space_samples() -> list[tuple[str, ArchSpec]]:
    """Two samples of every registered space (the search's inputs) plus hand-made variants."""
    cases = [("small", _small_spec()),
             ("plain-stem", _small_spec(stem="plain", avd_first=True, avg_down=False, dropout=0.1))]
    for name in list_spaces():
        cases += [(f"{name}-{seed}", get_space(name).sample(np.random.default_rng(seed)))
                  for seed in (11, 12)]
    return cases


@pytest.mark.parametrize("spec", [s for _, s in _space_samples()],
                         ids=[n for n, _ in _space_samples()])
def test_composition_equals_whole_model_and_real_tensors(spec: ArchSpec) -> None:
    """Per-part composition (meta, shape kernels, no initialisers) == one tracked forward of the
    whole model (meta, torch's kernels) == the same tracker on real CPU tensors, and MACs ==
    FlopCounterMode's total / 2."""
    size = max(16, spec.min_image_size)
    record = static_costs(spec, size, batch_size=4)
    assert (record.params, record.macs, record.peak_memory_bytes) == whole_model_costs(spec, size, 4)
    torch.manual_seed(0)
    model = build_model(spec).train()
    x = torch.randn(4, spec.in_channels, size, size)
    with _Tracker([*model.parameters(), *model.buffers(), x]) as tracker:
        model(x)
    assert tracker.peak == record.peak_memory_bytes
    assert record.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x[:1])
    assert record.macs == counter.get_total_flops() // 2


def test_meta_building_skips_initialisers_only_on_meta() -> None:
    """Inside `_meta_modules` layers built on meta skip `reset_parameters`; a layer built on a
    real device there is initialised exactly as outside, and the classes are restored after."""
    classes = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    before = [cls.__dict__.get("reset_parameters") for cls in classes]
    torch.manual_seed(0)
    outside = (nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(5, 2))
    calls: list[str] = []
    with mock.patch.object(nn.Conv2d, "reset_parameters", autospec=True,
                           side_effect=lambda module: calls.append("conv")):
        with _meta_modules():
            nn.Conv2d(3, 4, 3)
        assert calls == []
        nn.Conv2d(3, 4, 3)  # a real module after the context: initialised again
        assert calls == ["conv"]
    with _meta_modules():
        meta = nn.Conv2d(3, 4, 3)
        torch.manual_seed(0)
        inside = (nn.Conv2d(3, 4, 3, device="cpu"), nn.BatchNorm2d(4, device="cpu"),
                  nn.Linear(5, 2, device="cpu"))
    assert meta.weight.is_meta and meta.weight.shape == (4, 3, 3, 3)
    for a, b in zip(outside, inside, strict=True):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
    assert [cls.__dict__.get("reset_parameters") for cls in classes] == before


def test_imagenet_regime_composition() -> None:
    record = static_costs("resnest14d", 64, batch_size=2)
    assert (record.params, record.macs, record.peak_memory_bytes) == whole_model_costs("resnest14d", 64, 2)


def test_costs_grow_with_depth_batch_and_resolution() -> None:
    depth = [static_costs(n, 224) for n in ("resnest14d", "resnest26d", "resnest50d", "resnest101e")]
    assert all(a.macs < b.macs and a.params < b.params for a, b in zip(depth, depth[1:], strict=False))
    assert all(a.peak_memory_bytes < b.peak_memory_bytes for a, b in zip(depth, depth[1:], strict=False))
    small, large = static_costs("resnest50d", 128), static_costs("resnest50d", 256)
    assert large.macs == pytest.approx(4 * small.macs, rel=0.02) and large.params == small.params
    b2, b8 = static_costs("resnest50d", 128, batch_size=2), static_costs("resnest50d", 128, batch_size=8)
    assert b2.macs == b8.macs  # per image
    assert 3.5 * b2.peak_memory_bytes < b8.peak_memory_bytes <= 4 * b2.peak_memory_bytes


def test_static_costs_is_cached_by_content() -> None:
    spec = _small_spec(stem_width=16)
    first = static_costs(spec, 16)
    hits = _static.cache_info().hits
    # An equal spec arriving as a new object, or as JSON text, is the same cache entry.
    assert static_costs(ArchSpec.from_json(spec.to_json()), 16) is first
    assert static_costs(spec.to_json(), 16) is first
    assert _static.cache_info().hits == hits + 2
    assert static_costs(spec, 32) is not first


def test_record_is_frozen_and_serialisable() -> None:
    record = static_costs(_small_spec(), 16)
    assert isinstance(record, CostRecord)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.params = 0  # type: ignore[misc]
    assert json.loads(json.dumps(record.to_dict()))["macs"] == record.macs
    assert record.latency_ms is None and record.throughput_images_per_s is None


def test_measure_costs_on_cpu() -> None:
    spec = _small_spec()
    record = measure_costs(spec, image_size=16, batch_size=4, warmup=1, runs=3)
    static = static_costs(spec, 16, 4)
    assert (record.params, record.macs, record.peak_memory_bytes) == (
        static.params, static.macs, static.peak_memory_bytes)
    assert record.latency_ms > 0 and record.throughput_images_per_s > 0
    assert record.device == "cpu" and record.threads == torch.get_num_threads()
    assert measure_costs(spec, 16, batch_size=4, latency=False).latency_ms is None


def test_bad_inputs_raise_user_errors() -> None:
    with pytest.raises(UserError, match="below this spec's minimum 32"):
        static_costs("resnest50d", 16)
    with pytest.raises(UserError, match="batch size"):
        static_costs("resnest50d", 64, batch_size=1)
    with pytest.raises(UserError, match="unknown named point"):
        static_costs("resnest51d")
    with pytest.raises(SpecError):
        static_costs(_small_spec(stages=(StageSpec(1, 4, 1, 8),)), 16)
    with pytest.raises(UserError, match="device"):
        measure_costs(_small_spec(), 16, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            measure_costs(_small_spec(), 16, device="cuda")


def test_cli_prints_costs(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(_small_spec().to_json())
    assert main([str(path), "--image-size", "16", "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == static_costs(_small_spec(), 16).params and out["latency_ms"] is None
    assert main([str(path), "--image-size", "16", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "MACs @16px" in text and "latency (batch 1)" in text and "images/s" in text


@pytest.mark.parametrize("args,message", [
    (["resnest51d"], "unknown named point 'resnest51d'"),
    (["missing.json"], "does not exist"),
    (["{not json"], "not valid JSON"),
    (["resnest50d", "--image-size", "8"], "below this spec's minimum"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str],
                                          message: str) -> None:
    assert main(args + ["--no-latency"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_module_entry_point_bad_json_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{\"stages\": [")
    proc = subprocess.run([sys.executable, "-m", "nas.costs", str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "not valid JSON" in proc.stderr

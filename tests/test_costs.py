"""Cost model: published MACs/params, the closed form against FlopCounterMode and the real
model's parameters, the memory trace on meta against real CPU tensors, caching, CPU measurement
and the CLI's handling of bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas import CostRecord, build_model, measure_costs, static_costs
from nas.costs import main
from nas.models.costs import _PeakTracker, _static
from search_spaces import (
    ArchSpec,
    SpecError,
    StageSpec,
    UserError,
    counts,
    get_space,
    list_named_points,
    list_spaces,
    named_point,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small inputs gain nothing from a second thread, and on a shared 2-core machine OpenMP
    threads wait for each other at every op."""
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


def _oracle(spec: ArchSpec, image_size: int, device: str) -> tuple[int, int]:
    """(params, MACs of one image) of the real model: sum of numel, FlopCounterMode's total / 2."""
    with torch.device(device):
        model = build_model(spec).eval()
    x = torch.zeros(1, spec.in_channels, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


@pytest.mark.parametrize("name,size,macs,params", PUBLISHED)
def test_published_macs_and_params(name: str, size: int, macs: float, params: int | None) -> None:
    record = static_costs(name, image_size=size)
    # The paper's counts include a little more than convs + matmuls (<1% here).
    assert record.macs == pytest.approx(macs, rel=0.01)
    if params is not None:
        assert record.params == params
    assert record.image_size == size and record.device == "meta"


@pytest.mark.parametrize("name", list_named_points())
def test_closed_form_equals_torch_on_named_points(name: str) -> None:
    spec = named_point(name)
    assert (counts.params(spec), counts.macs(spec, 224)) == _oracle(spec, 224, "meta")


@pytest.mark.parametrize("preset,n,sizes,device", [
    pytest.param("small", 20, (16, 17, 32, 33), "cpu", id="small-20"),
    pytest.param("small", 200, (16, 17, 32, 33), "cpu", id="small-200", marks=pytest.mark.slow),
    pytest.param("imagenet", 4, (64, 97, 128, 224), "meta", id="imagenet-4"),
    pytest.param("imagenet", 200, (64, 97, 128, 224), "meta", id="imagenet-200",
                 marks=pytest.mark.slow),
])
def test_closed_form_equals_torch_on_samples(preset: str, n: int, sizes: tuple[int, ...],
                                             device: str) -> None:
    """Sampled specs at the sizes the preset is used at, odd sides included (the strided convs,
    the avd pool and the ceil-mode avg-down pool round differently there)."""
    space, rng = get_space("resnest", preset), np.random.default_rng(2024)
    wrong = []
    for i, size in zip(range(n), itertools.cycle(sizes)):
        spec = space.sample(rng)
        ours = (counts.params(spec), counts.macs(spec, size))
        if ours != (truth := _oracle(spec, size, device)):
            wrong.append((i, size, spec.to_json(), ours, truth))
    assert not wrong


def test_counts_reject_bad_image_sizes() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError, match="positive integer"):
            counts.macs(_small_spec(), bad)  # type: ignore[arg-type]


def _memory_cases() -> list[tuple[str, ArchSpec]]:
    """Two samples of every registered space plus hand-made variants (plain stem, avd first,
    strided shortcut, dropout)."""
    cases = [("small", _small_spec()),
             ("plain-stem", _small_spec(stem="plain", avd_first=True, avg_down=False, dropout=0.1))]
    for name in list_spaces():
        cases += [(f"{name}-{seed}", get_space(name).sample(np.random.default_rng(seed)))
                  for seed in (11, 12)]
    return cases


@pytest.mark.parametrize("spec", [s for _, s in _memory_cases()],
                         ids=[n for n, _ in _memory_cases()])
def test_memory_trace_on_meta_equals_real_tensors(spec: ArchSpec) -> None:
    """The meta trace of `static_costs` == the same tracker on a train forward of CPU tensors."""
    size = max(17, spec.min_image_size)
    record = static_costs(spec, size, batch_size=4, memory=True)
    torch.manual_seed(0)
    model = build_model(spec).train()
    x = torch.randn(4, spec.in_channels, size, size)
    with _PeakTracker([*model.parameters(), *model.buffers(), x]) as tracker:
        model(x)
    assert tracker.peak == record.peak_memory_bytes > 0


def test_memory_is_traced_only_when_asked() -> None:
    spec = _small_spec()
    plain, traced = static_costs(spec, 16), static_costs(spec, 16, memory=True)
    assert plain.peak_memory_bytes is None and isinstance(traced.peak_memory_bytes, int)
    assert (plain.params, plain.macs) == (traced.params, traced.macs)


def test_costs_grow_with_depth_batch_and_resolution() -> None:
    depth = [static_costs(n, 224, memory=True)
             for n in ("resnest14d", "resnest26d", "resnest50d", "resnest101e")]
    for a, b in itertools.pairwise(depth):
        assert a.macs < b.macs and a.params < b.params
        assert a.peak_memory_bytes < b.peak_memory_bytes
    small, large = static_costs("resnest50d", 128), static_costs("resnest50d", 256)
    assert large.macs == pytest.approx(4 * small.macs, rel=0.02) and large.params == small.params
    b2 = static_costs("resnest50d", 128, batch_size=2, memory=True)
    b8 = static_costs("resnest50d", 128, batch_size=8, memory=True)
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
    assert static_costs(spec, 16, memory=True) is not first


@pytest.mark.parametrize("memory", [False, True])
def test_record_is_frozen_and_serialisable(memory: bool) -> None:
    record = static_costs(_small_spec(), 16, memory=memory)
    assert isinstance(record, CostRecord)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.params = 0  # type: ignore[misc]
    assert json.loads(json.dumps(record.to_dict())) == record.to_dict()
    assert record.latency_ms is None and record.throughput_images_per_s is None


def test_measure_costs_on_cpu() -> None:
    spec = _small_spec()
    record = measure_costs(spec, image_size=16, batch_size=4, warmup=1, runs=3)
    static = static_costs(spec, 16, 4, memory=True)
    assert (record.params, record.macs, record.peak_memory_bytes) == (
        static.params, static.macs, static.peak_memory_bytes)
    assert record.latency_ms > 0 and record.throughput_images_per_s > 0
    assert record.device == "cpu" and record.threads == torch.get_num_threads()
    untimed = measure_costs(spec, 16, batch_size=4, latency=False, memory=False)
    assert untimed.latency_ms is None and untimed.peak_memory_bytes is None


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
    expected = static_costs(_small_spec(), 16, memory=True)
    assert out["params"] == expected.params and out["latency_ms"] is None
    assert out["peak_memory_bytes"] == expected.peak_memory_bytes
    assert main([str(path), "--image-size", "16", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "MACs @16px" in text and "peak train-forward" in text
    assert "latency" in text and "per forward (median of 10" in text and "images/s" in text


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

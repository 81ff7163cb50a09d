"""The built model survives every deployment path with unchanged numerics: TorchScript,
torch.export (dynamic batch), ONNX via the dynamo exporter run in onnxruntime, torch.compile
(graph capture without breaks; inductor in a slow test), channels_last, eval at batch size 1."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import torch

from nas import build_model
from nas.models.network import Bottleneck, SplitAttention
from search_spaces import ArchSpec, StageSpec


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small inputs gain nothing from a second thread, and on a shared 2-core machine OpenMP
    threads wait for each other at every op (a 64 px ResNeSt-269 forward: 0.3 s on one thread,
    15 s on two while other jobs ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Every code path in one small network: plain/grouped 3x3 (radix 0), sigmoid gate (radix 1),
# softmax over radix 2 and 4 with cardinality > 1, avd before the conv, strided-conv shortcut,
# 7x7 stem, dropout; plus a deep-stem, avg-down ImageNet-regime network.
MIXED = ArchSpec(
    stages=(StageSpec(1, 0, 2, 16), StageSpec(1, 1, 2, 16), StageSpec(2, 2, 2, 16),
            StageSpec(1, 4, 2, 16)),
    stem="plain", stem_width=8, base_planes=16, avg_down=False, avd_first=True, dropout=0.1,
    attn_min_width=16, input_regime="small", in_channels=1, num_classes=10,
)
IMAGENET = ArchSpec(
    stages=(StageSpec(1, 2, 1, 16), StageSpec(1, 2, 2, 16), StageSpec(1, 4, 2, 16)),
    stem_width=8, base_planes=16, num_classes=7,
)
POINTS = {"mixed": (MIXED, 16), "imagenet": (IMAGENET, 64)}


def _model_and_input(point: str, batch: int = 2) -> tuple[torch.nn.Module, torch.Tensor]:
    spec, size = POINTS[point]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    for m in model.modules():  # non-trivial BN so every branch contributes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(batch, spec.in_channels, size, size)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, still shipped
@pytest.mark.parametrize("point", POINTS)
def test_torchscript(point: str) -> None:
    model, x = _model_and_input(point)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("point", POINTS)
def test_torch_export_with_dynamic_batch(point: str) -> None:
    model, x = _model_and_input(point)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    other = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        assert torch.allclose(program.module()(other), model(other), atol=1e-5)


@pytest.mark.parametrize("point", POINTS)
def test_onnx_export_runs_in_onnxruntime(point: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = _model_and_input(point)
    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes={"x": {0: batch}},
                                input_names=["images"], output_names=["logits"], verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.randn(3, *x.shape[1:])
    (logits,) = session.run(None, {"images": other.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(other), atol=1e-4)


def test_compile_captures_one_graph_and_matches_eager_gradients() -> None:
    """fullgraph=True fails on any graph break; aot_eager also traces the backward, in
    channels_last (the layout the reference warns `.view` breaks)."""
    model, x = _model_and_input("mixed", batch=4)
    model.train()
    model.drop.p = 0.0  # dropout masks would differ between the two runs
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (model, compiled):
        model.zero_grad(set_to_none=True)
        fn(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_inductor_channels_last() -> None:
    """Real code generation (C++ kernels; ~1 min cold on 2 cores)."""
    model, x = _model_and_input("mixed")
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.parametrize("point", POINTS)
def test_channels_last_matches_contiguous(point: str) -> None:
    model, x = _model_and_input(point, batch=4)
    model.drop = torch.nn.Identity()
    layouts: list[bool] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: layouts.append(
        out.is_contiguous(memory_format=torch.channels_last))) for m in model.modules()
        if isinstance(m, (Bottleneck, SplitAttention))]
    with torch.no_grad():
        ref = model(x)
        layouts.clear()
        last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(last, ref, atol=1e-5)
    # Every block keeps channels_last (no silent NCHW round trips between layers).
    assert layouts and all(layouts)
    for h in hooks:
        h.remove()
    # Training too: same loss and gradients in both layouts.
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=fmt).train()
        model.zero_grad(set_to_none=True)
        model(x.to(memory_format=fmt)).square().mean().backward()
        grads.append(model.conv1.weight.grad if point == "mixed" else model.conv1[0].weight.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)  # summation order differs


@pytest.mark.parametrize("point", POINTS)
def test_eval_batch_size_one(point: str) -> None:
    model, x = _model_and_input(point, batch=3)
    with torch.no_grad():
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
        assert torch.allclose(single, model(x), atol=1e-5)
    with pytest.raises(ValueError, match="batch size >= 2"):
        model.train()(x[:1])

"""The builder: structure and numerics against timm (every timm point), against a naive reference
split attention (every radix/cardinality kind), against the reference's parameter formulas (space
samples), and forward/backward of named points and seeded space samples."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas import build_model
from nas.models.network import Bottleneck, ResNeSt, SplitAttention, make_stem
from search_spaces import ArchSpec, SpecError, StageSpec, get_space, list_named_points, list_spaces
from search_spaces.block_plan import BlockArgs, block_plan
from search_spaces.named_points import TIMM_POINTS


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small inputs gain nothing from a second thread, and on a shared 2-core machine OpenMP
    threads wait for each other at every op (a 64 px ResNeSt-269 forward: 0.3 s on one thread,
    15 s on two while other jobs ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SAMPLES_PER_SPACE = 200
# One space name per preset ("resnest" and "resnest-small" are the same bounds).
SPACES = list({get_space(name).preset.name: name for name in list_spaces()}.values())


def _randomize_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BN state (timm zero-inits bn3, which would hide every residual branch); the
    last BN of each branch stays small so outputs stay O(1) and 1e-5 is a real tolerance."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            last = name.endswith(("bn3", "downsample.1", "downsample.2"))
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            scale, shift = (0.3, 0) if last else (1.0, 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * scale + shift)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _valid_samples(space_name: str, n: int) -> tuple[list[ArchSpec], list[ArchSpec]]:
    """(buildable, unbuildable) among n seeded samples of a space."""
    space = get_space(space_name)
    good, bad = [], []
    for seed in range(n):
        spec = space.sample(np.random.default_rng(seed))
        try:
            block_plan(spec)
            good.append(spec)
        except SpecError:
            bad.append(spec)
    return good, bad


@pytest.fixture
def tiny_cpu() -> Iterator[None]:
    """For many tiny models: oneDNN builds backward kernels per new conv shape (~1 s per sampled
    architecture here); native CPU convolutions compute the same without that set-up cost. The
    oneDNN path is covered by the timm and export tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an unrelated TF32 notice
        with torch.backends.mkldnn.flags(enabled=False):
            yield


# ---------------------------------------------------------------- timm equivalence
@pytest.mark.parametrize("name", TIMM_POINTS)
def test_matches_timm_exactly(name: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False).eval()
    _randomize_bn(theirs)
    ours = build_model(name).eval()
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert {k: v.shape for k, v in sd_o.items()} == {k: v.shape for k, v in sd_t.items()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    ours.load_state_dict(sd_t, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = theirs(x), ours(x)
    assert ref.abs().max() > 0.05  # the comparison is not between two near-zero tensors
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["resnest14d", "resnest50d_4s2x40d", "resnest50d_1s4x24d"])
def test_matches_timm_in_train_mode_with_gradients(name: str, tiny_cpu: None) -> None:
    """float64: train-mode BN over tiny batches amplifies float32 rounding (different but equally
    valid summation orders) to ~1e-2 in input gradients; in float64 both agree to ~1e-13."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False)
    _randomize_bn(theirs)
    ours = build_model(name)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outs, grads = [], []
    for model in (theirs.double().train(), ours.double().train()):
        xi = x.clone().requires_grad_()
        y = model(xi)
        F.cross_entropy(y, torch.arange(4)).backward()
        outs.append(y.detach())
        grads.append((xi.grad, model.conv1[0].weight.grad, model.fc.weight.grad))
    assert (outs[0] - outs[1]).abs().max() <= 1e-10
    for a, b in zip(grads[0], grads[1], strict=True):
        assert (a - b).abs().max() <= 1e-9 * a.abs().max()
    # Running statistics moved identically (num_batches_tracked included).
    for (k, a), b in zip(theirs.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), k


# ---------------------------------------------------------------- split attention semantics
def _naive_split_attention(m: SplitAttention, x: torch.Tensor) -> torch.Tensor:
    """The reference's description, spelled out with loops: radix-major splits, cardinal-major
    attention logits, softmax over the radix within each cardinal group (sigmoid at radix 1)."""
    r_count, k_count = m.radix, m.cardinality
    y = F.relu(m.bn0(m.conv(x)))
    c = y.shape[1] // r_count
    splits = [y[:, r * c:(r + 1) * c] for r in range(r_count)]
    gap = sum(splits).mean((2, 3), keepdim=True)
    logits = m.fc2(F.relu(m.bn1(m.fc1(gap)))).flatten(1)
    ck = c // k_count
    out = torch.zeros_like(splits[0])
    for k in range(k_count):
        block = torch.stack([logits[:, (k * r_count + r) * ck:(k * r_count + r + 1) * ck]
                             for r in range(r_count)])
        weights = torch.softmax(block, 0) if r_count > 1 else torch.sigmoid(block)
        for r in range(r_count):
            part = splits[r][:, k * ck:(k + 1) * ck]
            out[:, k * ck:(k + 1) * ck] += weights[r][:, :, None, None] * part
    return out


@pytest.mark.parametrize("radix,cardinality,channels", [
    (1, 1, 32), (1, 4, 32), (2, 1, 32), (2, 2, 32), (3, 2, 48), (4, 2, 32), (4, 4, 64),
])
def test_split_attention_matches_naive_reference(
    radix: int, cardinality: int, channels: int
) -> None:
    torch.manual_seed(radix * 10 + cardinality)
    m = SplitAttention(channels, 16, radix, cardinality).eval()
    _randomize_bn(m)
    x = torch.randn(3, channels, 5, 7)
    with torch.no_grad():
        assert torch.allclose(m(x), _naive_split_attention(m, x), atol=1e-6)


def test_split_attention_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="radix"):
        SplitAttention(32, 16, 0, 1)
    with pytest.raises(ValueError, match="cardinality"):
        SplitAttention(32, 12, 2, 8)


# ---------------------------------------------------------------- structure
def _ref_params(spec: ArchSpec, num_classes: int) -> int:
    """Parameter count from the reference's layer list (independent of the builder's code)."""
    w, cin = spec.stem_width, spec.in_channels
    if spec.stem == "deep":
        total = cin * w * 9 + 2 * w + w * w * 9 + 2 * w + w * 2 * w * 9
    else:
        total = cin * w * 49
    total += 2 * spec.stem_out_channels
    inp = spec.stem_out_channels
    for i, stage in enumerate(spec.stages):
        gw, out = spec.group_width(i), spec.stage_planes(i) * 4
        r, k = stage.radix, stage.cardinality
        for j in range(stage.depth):
            total += inp * gw + 2 * gw + gw * gw * 9 // k + gw * out + 2 * out
            if r == 0:
                total += 2 * gw
            else:
                a = spec.attention_width(i)
                total += 2 * gw * r + (gw // k) * a + a + 2 * a + (a // k) * gw * r + gw * r
            if (i > 0 and j == 0) or inp != out:
                total += inp * out + 2 * out
            inp = out
    return total + spec.feature_channels * num_classes + num_classes


@functools.cache
def _block_params(args: BlockArgs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Bottleneck(*args).parameters())


@pytest.mark.parametrize("space_name", SPACES)
def test_space_samples_have_reference_parameter_counts(space_name: str) -> None:
    """All samples block by block (each distinct `Bottleneck` built once, on meta: ImageNet
    samples reach 100M+ parameters), whole models for the first 10."""
    good, _ = _valid_samples(space_name, SAMPLES_PER_SPACE)
    assert len(good) >= SAMPLES_PER_SPACE // 2
    for spec in good:
        blocks = sum(_block_params(a) for stage in block_plan(spec) for a in stage)
        with torch.device("meta"):
            stem = sum(p.numel() for m in make_stem(spec.stem, spec.stem_width, spec.in_channels,
                                                    spec.input_regime) for p in m.parameters())
        head = spec.feature_channels * spec.num_classes + spec.num_classes
        assert stem + blocks + head == _ref_params(spec, spec.num_classes)
    for spec in good[:10]:
        with torch.device("meta"):
            model = build_model(spec)
        assert sum(p.numel() for p in model.parameters()) == _ref_params(spec, spec.num_classes)


@pytest.mark.parametrize("name", list_named_points())
def test_named_point_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name)
    spec = model.spec
    assert sum(p.numel() for p in model.parameters()) == _ref_params(spec, spec.num_classes)


@pytest.mark.parametrize("space_name", SPACES)
def test_space_samples_are_all_buildable(space_name: str) -> None:
    _, bad = _valid_samples(space_name, SAMPLES_PER_SPACE)
    assert not bad, (f"{len(bad)} of {SAMPLES_PER_SPACE} samples unbuildable, "
                     f"e.g. {bad[0].to_json()}")


def test_unbuildable_spec_is_refused_at_construction() -> None:
    with pytest.raises(SpecError, match=r"stages\[0\]: radix 4 x cardinality 1 = 4 must divide"):
        ArchSpec(stages=(StageSpec(1, 4, 1, 8),), base_planes=16, input_regime="small")


def test_avd_placement_and_strides() -> None:
    spec = ArchSpec(stages=(StageSpec(2, 2, 1, 16),) * 3, base_planes=16, stem_width=8,
                    avd_first=True, input_regime="small")
    model = build_model(spec)
    blocks = [b for b in model.modules() if isinstance(b, Bottleneck)]
    pools = [(type(b.avd_first).__name__, type(b.avd_last).__name__) for b in blocks]
    # Stage 1 (stride 1) never pools; later stages pool only in their first block, before conv2.
    assert pools == ([("Identity", "Identity")] * 2
                     + [("AvgPool2d", "Identity"), ("Identity", "Identity")] * 2)
    assert all(b.conv2.conv.stride == (1, 1) for b in blocks)  # avd replaces the conv stride
    last = build_model(spec.replace(avd_first=False))
    assert isinstance(last.layer2[0].avd_last, torch.nn.AvgPool2d)
    no_avd = build_model(spec.replace(avd=False, avd_first=False))
    assert no_avd.layer2[0].conv2.conv.stride == (2, 2)
    plain = build_model(spec.replace(avg_down=False))
    assert plain.layer2[0].downsample[0].stride == (2, 2) and len(plain.layer2[0].downsample) == 2


@pytest.mark.parametrize("regime,stem,size", [("small", "deep", 16), ("small", "plain", 8),
                                              ("imagenet", "deep", 64), ("imagenet", "plain", 32)])
def test_stem_and_total_stride(regime: str, stem: str, size: int) -> None:
    spec = ArchSpec(stages=(StageSpec(1, 2, 1, 16), StageSpec(1, 0, 2, 16)), base_planes=16,
                    stem=stem, stem_width=8, input_regime=regime, in_channels=2, num_classes=5)
    model = build_model(spec).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 2, size, size))
    side = size // spec.total_stride
    assert feats.shape == (1, spec.feature_channels, side, side)
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) == (regime == "imagenet")
    first = model.conv1[0] if stem == "deep" else model.conv1
    assert first.stride == ((2, 2) if regime == "imagenet" else (1, 1))
    assert first.kernel_size == ((3, 3) if stem == "deep" else (7, 7))


def test_head_dropout_num_classes_and_purity() -> None:
    spec = ArchSpec(stages=(StageSpec(1, 1, 2, 16),), base_planes=16, stem_width=8,
                    dropout=0.2, num_classes=7, input_regime="small")
    torch.manual_seed(5)
    a = build_model(spec)
    torch.manual_seed(5)
    b = build_model(spec.to_json())
    assert isinstance(a.drop, torch.nn.Dropout) and a.drop.p == 0.2
    assert a.fc.out_features == 7 and build_model(spec, num_classes=3).fc.out_features == 3
    assert a.spec is spec and b.spec == spec
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k  # same seed, same weights: a pure function of the spec
    assert all(float(blk.bn3.weight.detach().abs().sum()) == 0
               for blk in a.modules() if isinstance(blk, Bottleneck))


def test_batch_size_one() -> None:
    spec = get_space("resnest").sample(np.random.default_rng(1))
    model = build_model(spec).eval()
    x = torch.randn(3, spec.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)
    with pytest.raises(ValueError, match="batch size >= 2"):
        model.train()(x[:1])


# ---------------------------------------------------------------- forward / backward
def _check_train_step(model: ResNeSt, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first = model.conv1[0] if isinstance(model.conv1, torch.nn.Sequential) else model.conv1
    assert first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_named_points())
def test_named_point_forward_backward(name: str, tiny_cpu: None) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10)
    _check_train_step(model, torch.randn(2, 3, 32, 32), 10)


@pytest.mark.parametrize("space_name", SPACES)
def test_space_samples_forward_backward(space_name: str, tiny_cpu: None) -> None:
    """Every buildable seeded sample of the small preset trains one step at 16 px. ImageNet-preset
    samples reach ResNeSt-269 sizes: their structure is checked for all samples above (parameter
    counts); here the 8 smallest train one step at 32 px."""
    good, _ = _valid_samples(space_name, SAMPLES_PER_SPACE)
    small = good[0].input_regime == "small"
    if not small:
        good = sorted(good, key=lambda s: _ref_params(s, s.num_classes))[:8]
    torch.manual_seed(0)
    for spec in good:
        model = build_model(spec)
        size = 16 if small else 32
        _check_train_step(model, torch.randn(2, spec.in_channels, size, size), spec.num_classes)

"""The elastic supernet (issue 20, items 1-2): extraction equals the supernet exactly, slices have
the spec's shapes and share storage as laid out, the sandwich step trains exactly the entries its
sub-networks use, BN recalibration sets the statistics eval uses, importance reordering keeps the
function, uncovered architectures are refused naming the field, and progressive shrinking draws
only from the part of the space open in each phase."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from nas import build_model
from nas.supernet import (
    Supernet,
    SupernetConfig,
    recalibrate_bn,
    reorder_by_importance,
    sandwich_step,
)
from nas.supernet.layout import family_of
from nas.supernet.shrink import SCHEDULES, WHOLE, Region, phase_of, schedule
from nas.supernet.trainer import SupernetTrainConfig
from search_spaces import ArchSpec, StageSpec, get_space
from search_spaces.errors import UserError
from search_spaces.resnest_space import SMALL

CONFIGS = {
    "deep-stem": SupernetConfig(stem_width=8),
    "plain-stem": SupernetConfig.from_preset(SMALL, stem="plain", stem_width=16, base_planes=32,
                                             avg_down=False, avd_first=True, attn_reduction=2,
                                             attn_min_width=8),
}
CONFIG = CONFIGS["deep-stem"]
SIZE = 8  # px: the small regime's four stages end at 1 px


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny inputs gain nothing from a second thread; on a shared 2-core machine it costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _randomized(config: SupernetConfig = CONFIG, seed: int = 0) -> Supernet:
    """A supernet with every BN affine random (the zero-initialised bn3 would hide every block)."""
    supernet = Supernet(config, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        affine = [(m.weight, m.bias) for m in supernet.modules() if isinstance(m, nn.BatchNorm2d)]
        for branch in supernet.branches():
            affine += [(branch.stored(n), branch.stored(n.replace("weight", "bias")))
                       for n in branch.axes if n.endswith(".weight") and ".bn" in f".{n}"]
        for gamma, beta in affine:
            gamma.uniform_(0.5, 1.5, generator=generator)
            beta.uniform_(-0.2, 0.2, generator=generator)
    return supernet


def _specs(config: SupernetConfig, count: int, seed: int) -> list[ArchSpec]:
    rng = np.random.default_rng(seed)
    return [config.largest(), config.smallest(), *(config.sample(rng) for _ in range(count))]


def _with_stage(spec: ArchSpec, index: int, *stage: int) -> ArchSpec:
    stages = list(spec.stages)
    stages[index] = StageSpec(*stage)
    return spec.replace(stages=stages)


CALIBRATION = [_images(8, 1), _images(8, 2)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_extraction_equals_the_supernet_exactly_after_the_same_recalibration(name: str) -> None:
    config = CONFIGS[name]
    supernet = _randomized(config)
    images = _images(16, 0)
    for spec in _specs(config, 20, seed=3):
        assert supernet.covers(spec) == []
        _, inherited = supernet.extract(spec)  # weights with the stored (stale) statistics
        recalibrate_bn(supernet, spec, CALIBRATION)
        expected = supernet(images, spec)
        # The supernet's recalibrated sub-network, extracted ...
        _, state = supernet.extract(spec)
        model = build_model(spec)
        model.load_state_dict(state, strict=True)
        assert torch.equal(model.eval()(images), expected), spec.tag
        # ... and the inherited weights recalibrated on their own as a standalone network.
        alone = build_model(spec)
        alone.load_state_dict(inherited, strict=True)
        recalibrate_bn(alone, spec, CALIBRATION)
        assert torch.equal(alone(images), expected), spec.tag


@pytest.mark.parametrize("seed", range(3))
def test_training_a_sub_network_trains_its_slice_as_the_standalone_network(seed: int) -> None:
    """Train mode (batch statistics): same outputs, and each stored tensor's gradient on the
    entries the spec uses, read in storage order, is the standalone tensor's gradient."""
    supernet = _randomized()
    spec = _specs(CONFIG, 3, seed=seed)[seed + 2]
    model = build_model(spec)
    model.load_state_dict(supernet.extract(spec)[1], strict=True)
    images, labels = _images(8, 0), torch.arange(8)
    out = supernet.train()(images, spec)
    assert torch.equal(out, model.train()(images))
    nn.functional.cross_entropy(out, labels).backward()
    nn.functional.cross_entropy(model(images), labels).backward()
    stored = dict(supernet.named_parameters())
    masks = supernet.usage(spec)
    for name, param in model.named_parameters():
        if name not in stored:  # a branch tensor: layerI.J.<family branch>.<storage name>
            stage, block, rest = name.split(".", 2)
            family = ("plain", "sigmoid", "softmax")[min(spec.stages[int(stage[5:]) - 1].radix, 2)]
            name = f"{stage}.{block}.branches.{family}.{rest.replace('.', '_')}"
        grad = stored[name].grad
        assert torch.equal(grad[masks[name]], param.grad.flatten()), name
        assert not grad[~masks[name]].any(), name


@pytest.mark.parametrize("seed", range(6))
def test_every_slice_has_the_shape_and_name_the_spec_implies(seed: int) -> None:
    supernet = Supernet(CONFIG)
    spec = _specs(CONFIG, 6, seed=seed)[seed]
    _, state = supernet.extract(spec)
    reference = build_model(spec).state_dict()
    assert list(state) == list(reference)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}


def test_sub_networks_share_weights_as_laid_out() -> None:
    supernet = _randomized()
    base = CONFIG.largest()

    def weight(spec: ArchSpec, name: str) -> torch.Tensor:
        return supernet.extract(spec)[1][name]

    # Width: the first channels of each group (plain, 2 groups; 16 planes: width 32 -> 8 of 16).
    narrow, wide = _with_stage(base, 0, 2, 0, 2, 32), _with_stage(base, 0, 2, 0, 2, 64)
    rows_narrow = weight(narrow, "layer1.0.conv1.weight").reshape(2, 8, -1)
    assert torch.equal(rows_narrow, weight(wide, "layer1.0.conv1.weight").reshape(2, 16, -1)[:, :8])
    # Cardinality: one group is the first diagonal block of two.
    one, two = _with_stage(base, 0, 2, 0, 1, 64), _with_stage(base, 0, 2, 0, 2, 64)
    conv2 = "layer1.0.conv2.weight"
    assert torch.equal(weight(one, conv2), weight(two, conv2)[:16])
    # Radix 2 and 4 (softmax family, 2 groups): radix 2 is radix 4's first 2 splits, each split
    # with its first inputs; the attention's output rows are cardinal-major (group, split, o).
    r2, r4 = _with_stage(base, 0, 2, 2, 2, 64), _with_stage(base, 0, 2, 4, 2, 64)
    split2 = weight(r2, "layer1.0.conv2.conv.weight").reshape(2, 2, 16, 8, 3, 3)
    split4 = weight(r4, "layer1.0.conv2.conv.weight").reshape(4, 2, 16, 4, 3, 3)
    assert torch.equal(split4[:2], split2[..., :4, :, :])
    attn2 = weight(r2, "layer1.0.conv2.fc2.weight").reshape(2, 2, 16, -1)
    attn4 = weight(r4, "layer1.0.conv2.fc2.weight").reshape(2, 4, 16, -1)
    assert torch.equal(attn4[:, :2, :, :attn2.shape[-1]], attn2)
    assert torch.equal(weight(r2, "layer1.0.conv3.weight"), weight(r4, "layer1.0.conv3.weight"))
    # Depth: the first block uses the same stored entries whichever depth; the families share
    # the stem, the shortcuts and the head, and nothing else.
    shallow = _with_stage(base, 1, 1, 4, 4, 64)
    plain = _with_stage(base, 1, 2, 0, 4, 64)
    deep_use, shallow_use, plain_use = (supernet.usage(s) for s in (base, shallow, plain))
    for name, mask in deep_use.items():
        if name.startswith("layer2.0.branches.softmax."):
            assert torch.equal(mask, shallow_use[name]) and mask.any(), name
        if name.startswith("layer2.1."):
            assert not shallow_use[name].any(), name
        if name.startswith(("conv1.", "bn1.", "fc.", "layer2.0.downsample.")):
            assert mask.all() and plain_use[name].all(), name
        if name.startswith("layer2."):
            assert not (mask & plain_use[name]).any() or "downsample" in name, name


def test_sandwich_step_trains_exactly_the_entries_its_sub_networks_use() -> None:
    supernet = _randomized()
    before = {k: v.detach().clone() for k, v in supernet.named_parameters()}
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
    labels = torch.arange(16) % 10
    result = sandwich_step(supernet, (_images(16, 0), labels), optimizer,
                           np.random.default_rng(0), n_random=2)
    assert result.specs[:2] == (CONFIG.largest(), CONFIG.smallest()) and len(result.specs) == 4
    assert all(np.isfinite(result.losses))
    used = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in before.items()}
    for spec in result.specs:
        for name, mask in supernet.usage(spec).items():
            used[name] |= mask
    changed = {}
    for name, param in supernet.named_parameters():
        mask = used[name]
        assert param.grad is None or not param.grad[~mask].any(), name
        assert torch.equal(param.detach()[~mask], before[name][~mask]), name
        changed[name] = not torch.equal(param.detach(), before[name])
        assert changed[name] == (param.grad is not None and bool(param.grad.any())), name
    # Shared weights moved: the stem, a shortcut, the head and a block every spec here used.
    block = "layer1.0.branches.softmax.conv1_weight"
    for name in ("conv1.0.weight", "layer1.0.downsample.1.weight", "fc.weight", block):
        assert changed[name], name
    assert not all(changed.values())  # branches no sub-network here used


def test_sandwich_step_is_seeded_and_distils_from_the_largest() -> None:
    labels = torch.arange(16) % 10
    runs = []
    for distill in (True, True, False):
        supernet = _randomized()
        optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
        result = sandwich_step(supernet, (_images(16, 0), labels), optimizer,
                               np.random.default_rng(7), n_random=1, distill=distill)
        runs.append((result, torch.cat([p.detach().flatten() for p in supernet.parameters()])))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    # Same sub-networks, other targets for the children: the largest's loss alone agrees.
    assert runs[2][0].specs == runs[0][0].specs
    assert runs[2][0].losses[0] == runs[0][0].losses[0]
    assert runs[2][0].losses[1:] != runs[0][0].losses[1:]


def test_training_forward_leaves_stored_statistics_alone() -> None:
    supernet = _randomized()
    spec = CONFIG.largest()
    recalibrate_bn(supernet, spec, CALIBRATION)
    stored = {k: v.clone() for k, v in supernet.named_buffers()}
    supernet.train()
    supernet(_images(8, 5), spec)
    assert all(torch.equal(v, stored[k]) for k, v in supernet.named_buffers())
    supernet.eval()
    with pytest.raises(UserError, match="recalibrate_bn"):
        supernet(_images(4, 0), spec)  # the weights may have changed since


def test_recalibration_sets_the_statistics_that_eval_uses() -> None:
    supernet = _randomized()
    spec = CONFIG.sample(np.random.default_rng(1))
    images = _images(16, 0)
    recalibrate_bn(supernet, spec, CALIBRATION)
    first, stats = supernet(images, spec), supernet.extract(spec)[1]
    shifted = [3.0 * batch + 1.0 for batch in CALIBRATION]
    recalibrate_bn(supernet, spec, shifted)
    second, new_stats = supernet(images, spec), supernet.extract(spec)[1]
    assert not torch.allclose(first, second)
    for name in stats:
        if name.endswith(("running_mean", "running_var")):
            assert not torch.equal(stats[name], new_stats[name]), name
        elif name.endswith("num_batches_tracked"):
            assert int(new_stats[name]) == len(shifted)
    # Every batch weighs the same: the stem's first BN holds its input's mean over all batches.
    stem_conv = supernet.conv1[0]
    with torch.no_grad():
        means = torch.stack([stem_conv(b).mean((0, 2, 3)) for b in shifted]).mean(0)
    torch.testing.assert_close(new_stats["conv1.1.running_mean"], means, rtol=1e-5, atol=1e-6)
    # The standalone network with its initial statistics computes something else.
    model = build_model(spec)
    model.load_state_dict({k: v for k, v in new_stats.items()
                           if not k.endswith(("running_mean", "running_var",
                                              "num_batches_tracked"))}, strict=False)
    assert not torch.allclose(model.eval()(images), second)


def test_eval_needs_the_sub_networks_own_statistics() -> None:
    supernet = _randomized()
    first, other = CONFIG.largest(), CONFIG.smallest()
    supernet.eval()
    with pytest.raises(UserError, match="stored for none"):
        supernet(_images(4, 0), first)
    recalibrate_bn(supernet, first, CALIBRATION)
    supernet(_images(4, 0), first)
    with pytest.raises(UserError, match=f"stored for {first.tag}, not {other.tag}"):
        supernet(_images(4, 0), other)


def _full(family_radix: int, depths: tuple[int, ...]) -> ArchSpec:
    """Every stage at the largest width and cardinality with radix `family_radix`."""
    stages = [StageSpec(d, family_radix, 4, 64) for d in depths]
    return CONFIG.largest().replace(stages=stages)


def test_importance_reordering_keeps_the_function_and_sorts_each_group() -> None:
    supernet = _randomized()
    images = _images(16, 0)
    mixed = CONFIG.largest().replace(stages=[StageSpec(2, 0, 4, 64), StageSpec(1, 2, 4, 64),
                                             StageSpec(2, 1, 4, 64), StageSpec(1, 2, 4, 64)])
    kept = [_full(0, (2, 2, 2, 2)), _full(1, (1, 2, 1, 2)), _full(2, (2, 1, 2, 1)), mixed]
    narrow = _with_stage(_full(2, (2, 2, 2, 2)), 0, 2, 4, 4, 16)
    before = {}
    for spec in [*kept, narrow]:
        recalibrate_bn(supernet, spec, CALIBRATION)
        before[spec] = supernet(images, spec)
    reorder_by_importance(supernet)
    for spec in [*kept, narrow]:
        recalibrate_bn(supernet, spec, CALIBRATION)
        after = supernet(images, spec)
        if spec is narrow:  # a prefix now holds other (more important) channels
            assert not torch.allclose(after, before[spec], atol=1e-4)
        else:
            torch.testing.assert_close(after, before[spec], rtol=1e-4, atol=1e-5)
    for branch in supernet.branches():
        scores = branch.l1("conv3.weight", ("g", "o"))
        assert bool((scores[:, :-1] >= scores[:, 1:]).all()), branch.family


UNCOVERED = {
    "stem": dict(stem="plain"),
    "avg_down": dict(avg_down=False),
    "base_planes": dict(base_planes=32),
    "dropout": dict(dropout=0.1),
    "num_classes": dict(num_classes=100),
    "stages[0].depth": dict(stages=[StageSpec(3, 0, 1, 64)] + [StageSpec(1, 0, 1, 64)] * 3),
    "stages[1].radix": dict(stages=[StageSpec(1, 0, 1, 64), StageSpec(1, 3, 1, 48)]
                            + [StageSpec(1, 0, 1, 64)] * 2),
    "stages[2].cardinality": dict(stages=[StageSpec(1, 0, 1, 64)] * 2
                                  + [StageSpec(1, 0, 8, 64), StageSpec(1, 0, 1, 64)]),
    "stages[3].width": dict(stages=[StageSpec(1, 0, 1, 64)] * 3 + [StageSpec(1, 0, 1, 40)]),
    "stages has 3 entries": dict(stages=[StageSpec(1, 0, 1, 64)] * 3),
}


@pytest.mark.parametrize("field", sorted(UNCOVERED))
def test_uncovered_architectures_are_refused_naming_the_field(field: str) -> None:
    supernet = Supernet(CONFIG)
    spec = CONFIG.smallest().replace(**UNCOVERED[field])
    problems = supernet.covers(spec)
    assert len(problems) == 1 and problems[0].startswith(field), problems
    for action in (supernet.extract, supernet.usage, lambda s: supernet(_images(4, 0), s)):
        with pytest.raises(UserError, match="outside this supernet") as err:
            action(spec)
        assert field in str(err.value) and "\n" not in str(err.value)


def test_attention_axes_do_not_matter_without_attention() -> None:
    spec = CONFIG.smallest()
    assert all(s.radix == 0 for s in spec.stages)
    other = spec.replace(attn_reduction=2, attn_min_width=32)
    assert Supernet(CONFIG).covers(other) == []
    assert Supernet(CONFIG).covers(_with_stage(other, 0, 1, 1, 1, 64))[0].startswith(
        "attn_reduction=2")


def test_sampling_is_seeded_and_covered() -> None:
    draws = [[CONFIG.sample(np.random.default_rng(4)) for _ in range(2)] for _ in range(2)]
    assert draws[0] == draws[1]
    specs = [CONFIG.sample(np.random.default_rng(s)) for s in range(30)]
    assert all(CONFIG.violations(s) == [] for s in specs) and len(set(specs)) == 30
    largest, smallest = CONFIG.largest(), CONFIG.smallest()
    assert [s.depth for s in largest.stages] == [2, 2, 2, 2]
    assert {(s.radix, s.cardinality, s.width) for s in largest.stages} == {(4, 4, 64)}
    assert {(s.depth, s.radix, s.cardinality, s.width) for s in smallest.stages} == {(1, 0, 1, 8)}


def test_every_small_space_architecture_has_a_covering_supernet() -> None:
    space = get_space("resnest")
    rng = np.random.default_rng(0)
    specs = [space.sample(rng) for _ in range(200)]
    assert all(SupernetConfig.covering(spec).violations(spec) == [] for spec in specs)
    spec = specs[0]
    supernet = Supernet(SupernetConfig.covering(spec))
    build_model(spec).load_state_dict(supernet.extract(spec)[1], strict=True)


def test_a_saved_supernet_loads_into_a_fresh_one() -> None:
    """Everything a sub-network inherits lives in the state dict (what a checkpoint will hold);
    the stored BN statistics' owner does not, so they are recalibrated after loading."""
    trained = _randomized(seed=0)
    fresh = Supernet(CONFIG, seed=5)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    images = _images(8, 0)
    for spec in _specs(CONFIG, 2, seed=9):
        for supernet in (trained, fresh):
            recalibrate_bn(supernet, spec, CALIBRATION)
        assert torch.equal(trained(images, spec), fresh(images, spec)), spec.tag


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError, match="avd_first"):
        SupernetConfig(avd=False, avd_first=True)
    with pytest.raises(UserError, match="not a fixed supernet axis"):
        SupernetConfig.from_preset(SMALL, width=(8,))
    supernet = Supernet(CONFIG)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.1)
    batch = (_images(4, 0), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match="n_random"):
        sandwich_step(supernet, batch, optimizer, np.random.default_rng(0), n_random=-1)
    with pytest.raises(UserError, match="numpy Generator"):
        sandwich_step(supernet, batch, optimizer, 0)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="needs the spec"):
        recalibrate_bn(supernet, None, CALIBRATION)
    with pytest.raises(UserError, match="at least one batch"):
        recalibrate_bn(supernet, CONFIG.largest(), [])
    with pytest.raises(UserError, match="expected an ArchSpec"):
        supernet.extract("resnest50d")  # type: ignore[arg-type]
    assert SupernetConfig.covering(CONFIG.largest()) == CONFIG


# Progressive shrinking ------------------------------------------------------------------------
def _outside(region: Region, config: SupernetConfig, spec: ArchSpec) -> list[str]:
    """Each closed axis of `spec` not at its largest (an independent reading of `Region`)."""
    out = []
    for i, stage in enumerate(spec.stages):
        planes = config.stage_planes(i)
        radixes = config.preset.radix_choices(planes)
        family = [r for r in radixes if family_of(r) == family_of(stage.radix)]
        if region.radix == "largest" and stage.radix != max(radixes):
            out.append(f"{i}.radix")
        if region.radix == "families" and stage.radix != max(family):
            out.append(f"{i}.radix")
        if not region.depth and stage.depth != config.stage_depths[i][1]:
            out.append(f"{i}.depth")
        if not region.cardinality and stage.cardinality != max(
                config.cardinalities(stage.radix)):
            out.append(f"{i}.cardinality")
        if not region.width and stage.width != max(
                config.preset.width_choices(stage.radix, planes)):
            out.append(f"{i}.width")
    return out


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_each_phase_draws_only_from_its_open_region(name: str) -> None:
    regions = schedule(name)
    assert regions[-1] == WHOLE  # every schedule ends with the whole space
    rng = np.random.default_rng(3)
    for index, region in enumerate(regions):
        specs = [region.smallest(CONFIG), *(region.sample(CONFIG, rng) for _ in range(300))]
        for spec in specs:
            assert CONFIG.violations(spec) == [], spec.tag
            assert _outside(region, CONFIG, spec) == [], (region.label, spec.tag)
            assert region.violations(CONFIG, spec) == [], (region.label, spec.tag)
            for later in regions[index:]:  # the open part only grows
                assert later.violations(CONFIG, spec) == [], (later.label, spec.tag)
        assert region.violations(CONFIG, CONFIG.largest()) == []
        # Every open axis varies, and the region's smallest is its least in each.
        seen = {axis: {getattr(st, axis) for s in specs for st in s.stages}
                for axis in ("depth", "radix", "cardinality", "width")}
        for axis in ("depth", "cardinality", "width"):
            assert (len(seen[axis]) > 1) == getattr(region, axis), (region.label, axis)
        assert len(seen["radix"]) == {"largest": 1, "families": 3, "all": 4}[region.radix]
        smallest = region.smallest(CONFIG)
        for i, least in enumerate(smallest.stages):
            stages = [s.stages[i] for s in specs]
            assert least.depth == min(st.depth for st in stages)
            assert least.radix == min(st.radix for st in stages)
            same = [st for st in stages if st.radix == least.radix]
            assert least.cardinality == min(st.cardinality for st in same)
            assert least.width == min(st.width for st in same), region.label
        if index:
            assert region.violations(CONFIG, regions[index - 1].smallest(CONFIG)) == []
    if len(regions) > 1:  # the first phase of every schedule leaves radix at most its families
        assert regions[0].violations(CONFIG, CONFIG.smallest()) != []


def test_a_sandwich_step_in_a_phase_trains_that_phase_s_sub_networks() -> None:
    labels = torch.arange(16) % 10
    for region in (*SCHEDULES["ofa"], *SCHEDULES["family-first"]):
        supernet = _randomized()
        optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
        result = sandwich_step(supernet, (_images(16, 0), labels), optimizer,
                               np.random.default_rng(7), n_random=3, region=region)
        assert result.specs[:2] == (CONFIG.largest(), region.smallest(CONFIG))
        assert all(_outside(region, CONFIG, s) == [] for s in result.specs), region.label
        assert all(np.isfinite(result.losses))


def test_the_first_phase_trains_the_largest_alone() -> None:
    """In OFA's first phase every child is the largest: distilled from itself its gradient is
    zero, so the step is the largest's alone (and the repeats are not run)."""
    labels = torch.arange(16) % 10
    images = _images(16, 0)
    first = SCHEDULES["ofa"][0]
    shrunk, alone = _randomized(), _randomized()
    optimizers = [torch.optim.SGD(s.parameters(), lr=0.05, momentum=0.9) for s in (shrunk, alone)]
    result = sandwich_step(shrunk, (images, labels), optimizers[0], np.random.default_rng(0),
                           n_random=2, region=first)
    assert result.specs == (CONFIG.largest(),) * 4
    alone.train()
    torch.nn.functional.cross_entropy(alone(images, CONFIG.largest()), labels).backward()
    optimizers[1].step()
    for (name, a), b in zip(shrunk.named_parameters(), alone.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert result.losses[1] == result.losses[2] == result.losses[3] > 0


def test_without_shrinking_the_draws_are_unchanged() -> None:
    """The whole region draws what the supernet always drew, draw for draw, and the sandwich
    without a region is the one before shrinking existed."""
    assert schedule("off") == (WHOLE,) and SupernetTrainConfig().shrink == "off"
    assert WHOLE.smallest(CONFIG) == CONFIG.smallest()
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    assert [WHOLE.sample(CONFIG, a) for _ in range(50)] == [CONFIG.sample(b) for _ in range(50)]
    assert a.integers(1 << 30) == b.integers(1 << 30)
    labels = torch.arange(16) % 10
    results = []
    for region in (None, WHOLE):
        supernet = _randomized()
        optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
        results.append(sandwich_step(supernet, (_images(16, 0), labels), optimizer,
                                     np.random.default_rng(7), n_random=2, region=region))
    rng = np.random.default_rng(7)
    assert results[0].specs == (CONFIG.largest(), CONFIG.smallest(), CONFIG.sample(rng),
                                CONFIG.sample(rng))
    assert results[0] == results[1]


def test_phases_take_equal_shares_of_the_steps() -> None:
    for total in (1, 4, 5, 9, 37, 1000):
        phases = [phase_of(step, total, 5) for step in range(total)]
        assert phases == sorted(phases) and phases[0] == 0
        if total >= 5:  # every phase has its share, the last step the whole space
            assert set(phases) == set(range(5))
            counts = [phases.count(p) for p in range(5)]
            assert max(counts) - min(counts) <= 1, (total, counts)
    assert [phase_of(s, 9, 1) for s in range(9)] == [0] * 9


@pytest.mark.parametrize("value", ["fast", "OFA", "", None, 1, True])
def test_a_bad_schedule_is_one_line_naming_the_option_and_the_choices(value: object) -> None:
    with pytest.raises(UserError) as err:
        SupernetTrainConfig(shrink=value)  # type: ignore[arg-type]
    assert str(err.value) == f"shrink must be one of off, ofa, family-first, got {value!r}"
    with pytest.raises(UserError, match=r"^--supernet-shrink must be one of off, ofa, "):
        schedule(value, "--supernet-shrink")
    with pytest.raises(UserError, match="radix must be one of largest, families, all"):
        Region(radix="some")

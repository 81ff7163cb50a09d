"""Search spaces: seeded sampling, Optuna define-by-run, contains(), presets and the registry."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import optuna
import pytest

import search_spaces as ss
from search_spaces.resnest_space import IMAGENET, SMALL, ResNeStSpace

SPACES = ss.list_distinct_spaces()


def test_aliases_name_the_same_space_and_each_space_is_tested_once() -> None:
    assert SPACES == ["resnest", "resnest-imagenet"]
    assert ss.get_space("resnest").preset == ss.get_space("resnest-small").preset
    assert set(ss.list_spaces()) == {"resnest", "resnest-small", "resnest-imagenet"}


@pytest.mark.parametrize("space_name", SPACES)
def test_samples_are_valid_contained_and_seeded(space_name: str) -> None:
    space = ss.get_space(space_name)
    first = [space.sample(np.random.default_rng(seed)) for seed in range(200)]
    again = [space.sample(np.random.default_rng(seed)) for seed in range(200)]
    assert first == again
    assert all(space.contains(spec) for spec in first)
    # Sampling explores: many distinct architectures, every radix of the space shows up.
    assert len(set(first)) > 150
    assert {s.radix for spec in first for s in spec.stages} == set(space.preset.usable_radix)


@pytest.mark.parametrize("space_name", SPACES)
def test_optuna_suggest_gives_valid_specs_with_static_distributions(space_name: str) -> None:
    space = ss.get_space(space_name)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    study = optuna.create_study(sampler=sampler)
    specs = []

    def objective(trial: optuna.Trial) -> float:
        spec = space.suggest(trial)
        specs.append(spec)
        return float(sum(s.depth * s.width for s in spec.stages))

    study.optimize(objective, n_trials=30)
    assert all(space.contains(s) for s in specs)
    assert len(study.trials) == 30 and all(t.state.name == "COMPLETE" for t in study.trials)


# A parameter name as optuna-dashboard lists it: the axis, then (only where a condition narrowed
# its choices) that condition, e.g. s1_width[radix=4,planes=16].
READABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\[[a-z]+=\d+(,[a-z]+=\d+)*\])?$")


@pytest.mark.parametrize("space_name", SPACES)
def test_study_parameters_read_and_sort_as_numbers(space_name: str) -> None:
    space = ss.get_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(300):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
    distributions = {k: v for t in study.trials for k, v in t.distributions.items()}
    assert all(READABLE_NAME.match(name) for name in distributions), sorted(distributions)
    narrowed = [name for name in distributions if "[" in name]
    assert narrowed, "the space narrows some widths; their names must say under what condition"
    for name, dist in distributions.items():
        axis = ss.resnest_space.base_name(name)
        assert axis in space.dimensions
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            numbers = [c for c in dist.choices if not isinstance(c, (bool, str))]
            if numbers:  # numeric choices: all numbers, ascending, as Optuna's plots sort them
                assert len(numbers) == len(dist.choices) and numbers == sorted(numbers), name
        else:
            assert isinstance(dist, optuna.distributions.IntDistribution), name
    for name in narrowed:  # the condition is what narrowed the choices
        condition = {k: int(v) for k, v in
                     (part.split("=") for part in name[name.index("[") + 1:-1].split(","))}
        if name.startswith(tuple(f"s{i}_cardinality" for i in range(1, 10))):
            expected = space.preset.cardinality if condition == {"radix": 0} else None
        elif "radix" in condition:
            expected = space.preset.width_choices(condition["radix"], condition["planes"])
        else:
            expected = space.preset.radix_choices(condition["planes"])
        assert distributions[name].choices == expected, name


def test_same_optuna_seed_same_architectures() -> None:
    space = ss.get_space("resnest")

    def run() -> list:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        return [space.suggest(study.ask()) for _ in range(10)]

    assert run() == run()


@pytest.mark.parametrize("name", ss.list_named_points())
def test_imagenet_preset_contains_every_named_point(name: str) -> None:
    assert ss.get_space("resnest-imagenet").contains(ss.named_point(name))


def test_small_preset_excludes_imagenet_points_and_says_why() -> None:
    space = ss.get_space("resnest")
    spec = ss.named_point("resnest50d")
    assert not space.contains(spec)
    problems = space.violations(spec)
    assert "input_regime='imagenet' not in ('small',)" in problems
    assert any(p.startswith("stages[1].depth=4") for p in problems)


def test_contains_rejects_out_of_bounds_cardinality_for_attention() -> None:
    space = ss.get_space("resnest-imagenet")
    spec = ss.named_point("resnext50d_32x4d")
    assert space.contains(spec)  # radix 0 may use cardinality 32
    # radix 1 with cardinality 32 would break attention divisibility in general: outside the space
    too_wide = spec.replace(stages=[dataclasses.replace(s, radix=1, width=8) for s in spec.stages])
    assert not space.contains(too_wide)


def test_conditional_avd_first_only_with_avd() -> None:
    space = ss.get_space("resnest")
    specs = [space.sample(np.random.default_rng(s)) for s in range(100)]
    assert any(s.avd_first for s in specs)
    assert all(s.avd for s in specs if s.avd_first)


def test_dimensions_cover_every_stage_axis() -> None:
    dims = ss.get_space("resnest-imagenet").dimensions
    for stage in range(1, 5):
        for axis in ("depth", "radix", "cardinality", "width"):
            assert f"s{stage}_{axis}" in dims
    assert dims["s3_depth"] == tuple(range(1, 49))


def test_unknown_space_and_preset_list_valid_ones() -> None:
    with pytest.raises(ss.UserError, match="unknown space 'resnet'; valid spaces: resnest"):
        ss.get_space("resnet")
    with pytest.raises(ss.UserError, match="unknown preset 'huge'; valid presets: small, imagenet"):
        ss.get_space("resnest", preset="huge")
    assert ss.get_space("resnest", preset="imagenet").preset is IMAGENET


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"radix": (1, 2), "cardinality": (16, 32)}, "admits no valid architecture"),
        ({"width": ()}, "axis width has no allowed values"),
        ({"stage_depths": ((2, 1),) * 4}, "needs 1 <= low <= high"),
        ({"attn_min_width": (12,)}, "must be a multiple of 8"),
        ({"base_planes": (8,), "width": (4,)}, "gives zero channels per group"),
        ({"radix": (4,), "width": (8,), "base_planes": (16,)}, "splits evenly into any radix"),
        ({"width": (16, 8, 32)}, "axis width must list distinct values in ascending order"),
        ({"dropout": (0.0, 0.0)}, "axis dropout must list distinct values in ascending order"),
    ],
)
def test_space_bounds_that_admit_nothing_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ss.UserError, match=message):
        ResNeStSpace(dataclasses.replace(SMALL, **change))


@pytest.mark.parametrize("space_name", SPACES)
def test_params_of_replays_through_optuna(space_name: str) -> None:
    space = ss.get_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for seed in range(20):
        spec = space.sample(np.random.default_rng(seed))
        study.enqueue_trial(space.params_of(spec))
        assert space.suggest(study.ask()) == spec


def test_params_of_refuses_points_outside_the_space() -> None:
    with pytest.raises(ss.UserError, match="outside space small"):
        ss.get_space("resnest").params_of(ss.named_point("resnest50d"))

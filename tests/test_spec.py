"""Architecture spec: JSON round trip, hashing, validation messages, tags."""

from __future__ import annotations

import json

import numpy as np
import pytest

import search_spaces as ss
from search_spaces.spec import ArchSpec, StageSpec, uniform_stages

NAMED = ss.list_named_points()


def _samples(n: int = 200) -> list[tuple[str, int]]:
    return [(space, seed) for space in ss.list_distinct_spaces() for seed in range(n)]


@pytest.mark.parametrize("name", NAMED)
def test_named_point_round_trips_json(name: str) -> None:
    spec = ss.named_point(name)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert hash(again) == hash(spec)
    assert again.to_json() == spec.to_json()
    assert again.spec_hash == spec.spec_hash


@pytest.mark.parametrize(("space", "seed"), _samples())
def test_sampled_spec_round_trips_json(space: str, seed: int) -> None:
    spec = ss.get_space(space).sample(np.random.default_rng(seed))
    assert ArchSpec.from_json(spec.to_json(indent=2)) == spec


def test_spec_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, search_spaces; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tags_use_paper_notation() -> None:
    assert ss.named_point("resnest50d").tag == "2s1x64d_3-4-6-3"
    assert ss.named_point("resnest50_fast_1s4x24d").tag == "1s4x24d_3-4-6-3"
    mixed = ss.named_point("resnest14d").replace(
        stages=[StageSpec(1, 2, 1, 64), StageSpec(1, 1, 2, 40), StageSpec(1, 2, 1, 64),
                StageSpec(1, 0, 1, 64)]
    )
    assert mixed.tag == "2s1x64d-1s2x40d-2s1x64d-0s1x64d_1-1-1-1"


def test_hash_distinguishes_specs() -> None:
    hashes = {ss.named_point(n).spec_hash for n in NAMED}
    # resnest50d_4s2x40d and resnest50_fast_4s2x40d (and the 1s4x24d pair) are the same network.
    assert len(hashes) == len(NAMED) - 2


def test_attention_width_matches_reference() -> None:
    spec = ss.named_point("resnest50d")
    assert [spec.group_width(i) for i in range(4)] == [64, 128, 256, 512]
    assert [spec.attention_width(i) for i in range(4)] == [32, 64, 128, 256]


BASE = ss.named_point("resnest14d").to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stem": "fancy"}, "stem must be one of deep, plain"),
        ({"input_regime": "huge"}, "input_regime must be one of"),
        ({"dropout": 1.5}, "spec.dropout must be in [0, 1)"),
        ({"dropout": "x"}, "spec.dropout must be a number"),
        ({"num_classes": 0}, "spec.num_classes must be >= 1"),
        ({"stem_width": 3.5}, "spec.stem_width must be an integer"),
        ({"avg_down": "yes"}, "spec.avg_down must be true or false"),
        ({"avd": False, "avd_first": True}, "avd_first requires avd=true"),
        ({"stages": []}, "stages must be a non-empty list"),
        ({"stages": "abc"}, "spec.stages must be a list"),
        ({"bogus": 1}, "spec has unknown field(s) bogus"),
        ({"stages": [{"depth": 1, "radix": 2, "cardinality": 1}]},
         "stages[0] is missing field(s) width"),
        ({"stages": [{"depth": 0, "radix": 2, "cardinality": 1, "width": 64}]},
         "stages[0].depth must be >= 1"),
        ({"stages": [{"depth": 1, "radix": -1, "cardinality": 1, "width": 64}]},
         "stages[0].radix must be >= 0"),
        ({"stages": [{"depth": 1, "radix": 2, "cardinality": 1, "width": 64, "x": 1}]},
         "stages[0] has unknown field(s) x"),
        # attention width 32 is not divisible by cardinality 64
        ({"stages": [{"depth": 1, "radix": 1, "cardinality": 64, "width": 1}]},
         "stages[0].cardinality=64 must divide the attention width"),
        ({"base_planes": 16, "stages": [{"depth": 1, "radix": 2, "cardinality": 1, "width": 2}]},
         "stages[0].width=2 gives zero channels"),
        ({"base_planes": 16, "stages": [{"depth": 1, "radix": 4, "cardinality": 1, "width": 8}]},
         "stages[0]: radix 4 x cardinality 1 = 4 must divide the group width 2"),
    ],
)
def test_validation_names_field_and_rule(change: dict, message: str) -> None:
    data = {**BASE, **change}
    with pytest.raises(ss.SpecError) as err:
        ArchSpec.from_json(json.dumps(data))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text", ["not json", "[1, 2]", "{}", '{"stages": [1]}'],
    ids=["garbage", "list", "empty", "int-stage"],
)
def test_malformed_json_is_a_spec_error(text: str) -> None:
    with pytest.raises(ss.SpecError):
        ArchSpec.from_json(text)


def test_radix_zero_needs_no_attention_divisibility() -> None:
    spec = ArchSpec(stages=uniform_stages((1,), 0, 64, 1), avd=False)
    assert spec.stages[0].cardinality == 64


def test_unknown_named_point_lists_valid_names() -> None:
    with pytest.raises(ss.UserError, match="unknown named point 'resnest51'.*resnest50d"):
        ss.named_point("resnest51")


def test_resolve_spec_accepts_names_json_files_and_text(tmp_path) -> None:
    spec = ss.named_point("resnest26d")
    path = tmp_path / "arch.json"
    path.write_text(spec.to_json())
    wrapped = tmp_path / "meta.json"
    wrapped.write_text(json.dumps({"spec": spec.to_dict(), "tag": spec.tag}))
    assert ss.resolve_spec("resnest26d") == spec
    assert ss.resolve_spec(str(path)) == spec
    assert ss.resolve_spec(path) == spec
    assert ss.resolve_spec(str(wrapped)) == spec
    assert ss.resolve_spec(spec.to_json()) == spec
    with pytest.raises(ss.UserError, match="does not exist"):
        ss.resolve_spec(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ss.SpecError, match="bad.json: not valid JSON"):
        ss.resolve_spec(str(bad))

"""Architecture spec of a ResNeSt-family network: frozen, hashable, torch-free, JSON round-trips.

Everything downstream (search spaces, builder, costs, trial records, export) speaks this type, so
validation lives here, at construction, and names the offending field and the rule it breaks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from search_spaces.errors import SpecError

Stem = Literal["deep", "plain"]
InputRegime = Literal["imagenet", "small"]
STEMS: tuple[str, ...] = ("deep", "plain")
INPUT_REGIMES: tuple[str, ...] = ("imagenet", "small")
EXPANSION = 4


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to a multiple of `divisor`, never more than 10% down (timm's rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{owner}.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{owner}.{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class StageSpec:
    """One stage of bottleneck blocks.

    radix 0 is a plain grouped 3x3 conv (ResNet/ResNeXt), 1 a sigmoid-gated split attention, >= 2 a
    softmax over `radix` splits. `width` is the bottleneck width per cardinal group at 64 planes
    (the "64d" in 2s1x64d); the stage's group width scales it with the stage's planes.
    """

    depth: int
    radix: int
    cardinality: int
    width: int

    def __post_init__(self) -> None:
        _check_int("stage", "depth", self.depth, 1)
        _check_int("stage", "radix", self.radix, 0)
        _check_int("stage", "cardinality", self.cardinality, 1)
        _check_int("stage", "width", self.width, 1)

    @property
    def block_tag(self) -> str:
        """The paper's notation for the block: {radix}s{cardinality}x{width}d."""
        return f"{self.radix}s{self.cardinality}x{self.width}d"


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stages plus the global choices (stem, shortcut, avd, attention, head,
    input)."""

    stages: tuple[StageSpec, ...]
    stem: str = "deep"
    stem_width: int = 32
    base_planes: int = 64
    avg_down: bool = True
    avd: bool = True
    avd_first: bool = False
    attn_reduction: int = 4
    attn_min_width: int = 32
    dropout: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    input_regime: str = "imagenet"

    def __post_init__(self) -> None:
        stages = self.stages
        if isinstance(stages, list):
            stages = tuple(stages)
            object.__setattr__(self, "stages", stages)
        if not isinstance(stages, tuple) or not stages:
            raise SpecError(f"stages must be a non-empty list of stages, got {self.stages!r}")
        if len(stages) > 6:
            raise SpecError(f"stages must have at most 6 entries, got {len(stages)}")
        for i, stage in enumerate(stages):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stages[{i}] must be a StageSpec, got {type(stage).__name__}")
        if self.stem not in STEMS:
            raise SpecError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if self.input_regime not in INPUT_REGIMES:
            raise SpecError(
                f"input_regime must be one of {', '.join(INPUT_REGIMES)}, got {self.input_regime!r}"
            )
        for name, minimum in (
            ("stem_width", 1),
            ("base_planes", 1),
            ("attn_reduction", 1),
            ("attn_min_width", 1),
            ("num_classes", 1),
            ("in_channels", 1),
        ):
            _check_int("spec", name, getattr(self, name), minimum)
        for name in ("avg_down", "avd", "avd_first"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"spec.{name} must be true or false, got {getattr(self, name)!r}")
        if self.avd_first and not self.avd:
            raise SpecError("spec.avd_first requires avd=true (it places the avd pool)")
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise SpecError(f"spec.dropout must be a number in [0, 1), got {dropout!r}")
        if not (0.0 <= float(dropout) < 1.0) or math.isnan(dropout):
            raise SpecError(f"spec.dropout must be in [0, 1), got {dropout}")
        object.__setattr__(self, "dropout", float(dropout))
        for i, stage in enumerate(stages):
            self._check_stage(i, stage)

    def _check_stage(self, index: int, stage: StageSpec) -> None:
        planes = self.stage_planes(index)
        if int(planes * stage.width / 64) < 1:
            raise SpecError(
                f"stages[{index}].width={stage.width} gives zero channels per group at "
                f"{planes} planes; need width >= {math.ceil(64 / planes)}"
            )
        if stage.radix >= 1:
            splits = stage.radix * stage.cardinality
            if self.group_width(index) % splits:
                raise SpecError(
                    f"stages[{index}]: radix {stage.radix} x cardinality {stage.cardinality} = "
                    f"{splits} must divide the group width {self.group_width(index)} (width "
                    f"{stage.width} at {planes} planes): the split conv has that many groups"
                )
            attn = self.attention_width(index)
            if attn % stage.cardinality:
                raise SpecError(
                    f"stages[{index}].cardinality={stage.cardinality} must divide the attention "
                    f"width {attn} (from group width {self.group_width(index)}, radix "
                    f"{stage.radix}, attn_reduction {self.attn_reduction}, attn_min_width "
                    f"{self.attn_min_width})"
                )

    # Derived sizes: one definition used by the builder, the export code and the tests.
    def stage_planes(self, index: int) -> int:
        """Planes of stage `index` (outputs are planes * 4)."""
        return self.base_planes * 2**index

    def group_width(self, index: int) -> int:
        """Channels of the 3x3 (split-attention) conv in stage `index`."""
        stage = self.stages[index]
        return int(self.stage_planes(index) * stage.width / 64) * stage.cardinality

    def attention_width(self, index: int) -> int:
        """Hidden width of the attention MLP of stage `index` (timm rounds it to multiples of 8)."""
        stage = self.stages[index]
        return make_divisible(
            self.group_width(index) * max(stage.radix, 1) / self.attn_reduction,
            8,
            min_value=self.attn_min_width,
        )

    @property
    def stem_out_channels(self) -> int:
        return self.stem_width * 2 if self.stem == "deep" else self.stem_width

    @property
    def feature_channels(self) -> int:
        return self.stage_planes(len(self.stages) - 1) * EXPANSION

    @property
    def total_stride(self) -> int:
        """Input pixels per output pixel: stem stride times the stride-2 stages."""
        stem = 4 if self.input_regime == "imagenet" else 1
        return stem * 2 ** (len(self.stages) - 1)

    @property
    def min_image_size(self) -> int:
        """Smallest input side that leaves at least one pixel after every stride."""
        return self.total_stride

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def tag(self) -> str:
        """Short name: paper block notation (once if all stages agree) plus per-stage depths."""
        blocks = {s.block_tag for s in self.stages}
        block = (
            self.stages[0].block_tag
            if len(blocks) == 1
            else "-".join(s.block_tag for s in self.stages)
        )
        return f"{block}_{'-'.join(map(str, self.depths))}"

    # Serialization
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "stages":
                value = [
                    {sf.name: getattr(s, sf.name) for sf in fields(StageSpec)} for s in value
                ]
            out[f.name] = value
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @property
    def spec_hash(self) -> str:
        """Stable content hash (12 hex digits) for caches and file names."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        if not isinstance(data, dict):
            raise SpecError(f"spec must be a JSON object, got {type(data).__name__}")
        _check_keys("spec", data, {f.name for f in fields(cls)}, required={"stages"})
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list):
            raise SpecError(f"spec.stages must be a list, got {type(raw_stages).__name__}")
        stage_keys = {f.name for f in fields(StageSpec)}
        stages = []
        for i, raw in enumerate(raw_stages):
            if not isinstance(raw, dict):
                raise SpecError(f"stages[{i}] must be an object, got {type(raw).__name__}")
            _check_keys(f"stages[{i}]", raw, stage_keys, required=stage_keys)
            try:
                stages.append(StageSpec(**raw))
            except SpecError as err:
                raise SpecError(str(err).replace("stage.", f"stages[{i}].", 1)) from None
        for name in ("stem", "input_regime"):
            if name in data and not isinstance(data[name], str):
                raise SpecError(f"spec.{name} must be a string, got {data[name]!r}")
        kwargs = {k: v for k, v in data.items() if k != "stages"}
        return cls(stages=tuple(stages), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"spec is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed (validated like any construction)."""
        data = self.to_dict()
        data.update(changes)
        if "stages" in changes:
            data["stages"] = [
                s if isinstance(s, dict)
                else {f.name: getattr(s, f.name) for f in fields(StageSpec)}
                for s in changes["stages"]
            ]
        return ArchSpec.from_dict(data)


def _check_keys(owner: str, data: dict, allowed: set[str], required: set[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise SpecError(
            f"{owner} has unknown field(s) {', '.join(extra)}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(data))
    if missing:
        raise SpecError(f"{owner} is missing field(s) {', '.join(missing)}")


def uniform_stages(
    depths: tuple[int, ...], radix: int, cardinality: int, width: int
) -> tuple[StageSpec, ...]:
    """Stages that share one block type, as every published ResNeSt does."""
    return tuple(StageSpec(d, radix, cardinality, width) for d in depths)


__all__ = ["ArchSpec", "StageSpec", "make_divisible", "uniform_stages", "STEMS", "INPUT_REGIMES"]

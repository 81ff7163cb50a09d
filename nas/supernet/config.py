"""Which architectures one supernet covers: its fixed global axes and its elastic per-stage axes.

Fixed per supernet (one value each; a spec with another value is outside it): `stem` and
`stem_width` (the stem's weights), `base_planes` (every stage's planes, hence every block's output
and every shortcut's shape), `avg_down` (the shortcut's structure), `avd` and `avd_first` (where a
strided block pools, which changes what its convs see), `attn_reduction` and `attn_min_width` (the
attention MLP's sizing rule), `dropout` (a training setting: a supernet trains with one value),
and the task (`num_classes`, `in_channels`, `input_regime`). A search over these axes keeps one
supernet per combination; `SupernetConfig.covering(spec)` is the one that covers `spec`.

Elastic per stage: `depth` (the first D blocks), `radix` (a weight family per radix kind, then
the first r splits), `cardinality` (the first k groups) and `width` (the first channels of each
group). `nas.supernet.supernet` says how the weights are laid out and shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from search_spaces.errors import UserError
from search_spaces.resnest_space import SMALL, ResNeStSpace, SpacePreset
from search_spaces.spec import ArchSpec, StageSpec

# Global axes fixed per supernet, checked in this order by `violations`.
FIXED_AXES = ("stem", "stem_width", "base_planes", "avg_down", "avd", "avd_first",
              "attn_reduction", "attn_min_width", "dropout", "num_classes", "in_channels",
              "input_regime")
ATTENTION_AXES = ("attn_reduction", "attn_min_width")  # only matter where a stage has radix >= 1


@dataclass(frozen=True)
class SupernetConfig:
    """The fixed global values and the elastic per-stage bounds of one supernet (defaults: the
    `resnest` space's `small` preset with one choice of its global axes)."""

    stem: str = "deep"
    stem_width: int = 16
    base_planes: int = 16
    avg_down: bool = True
    avd: bool = True
    avd_first: bool = False
    attn_reduction: int = 4
    attn_min_width: int = 16
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 1
    input_regime: str = "small"
    stage_depths: tuple[tuple[int, int], ...] = SMALL.stage_depths
    radix: tuple[int, ...] = SMALL.radix
    cardinality: tuple[int, ...] = SMALL.cardinality
    width: tuple[int, ...] = SMALL.width

    def __post_init__(self) -> None:
        self.preset  # noqa: B018 - validates the bounds (SpacePreset's rules)
        self.largest()  # validates the fixed values together (ArchSpec's rules)

    @classmethod
    def from_preset(cls, preset: SpacePreset = SMALL, **fixed: Any) -> SupernetConfig:
        """The preset's elastic bounds; each fixed axis `fixed` names, else the preset's first
        value of it."""
        unknown = sorted(set(fixed) - set(FIXED_AXES))
        if unknown:
            raise UserError(f"{', '.join(unknown)} is not a fixed supernet axis; fixed axes: "
                            f"{', '.join(FIXED_AXES)}")
        values = {name: getattr(preset, name) for name in FIXED_AXES}
        values = {name: v[0] if isinstance(v, tuple) else v for name, v in values.items()}
        values.update(fixed)
        return cls(**values, stage_depths=preset.stage_depths, radix=preset.radix,
                   cardinality=preset.cardinality, width=preset.width)

    @classmethod
    def covering(cls, spec: ArchSpec, preset: SpacePreset = SMALL) -> SupernetConfig:
        """The supernet over `preset`'s elastic bounds whose fixed axes are `spec`'s."""
        return cls.from_preset(preset, **{name: getattr(spec, name) for name in FIXED_AXES})

    @cached_property
    def preset(self) -> SpacePreset:
        """The space this supernet covers: the elastic bounds, each fixed axis a single value."""
        fixed = {name: (getattr(self, name),) for name in FIXED_AXES
                 if name not in ("num_classes", "in_channels", "input_regime")}
        return SpacePreset(name="supernet", stage_depths=self.stage_depths, radix=self.radix,
                           cardinality=self.cardinality, width=self.width,
                           input_regime=self.input_regime, num_classes=self.num_classes,
                           in_channels=self.in_channels, **fixed)

    def stage_planes(self, index: int) -> int:
        return self.base_planes * 2**index

    def cardinalities(self, radix: int) -> tuple[int, ...]:
        """Cardinalities allowed with `radix` (attention needs ones dividing its width)."""
        return self.preset.cardinality if radix == 0 else self.preset.attention_cardinalities

    def stage_choices(self, index: int) -> list[tuple[int, int, int]]:
        """Every (radix, cardinality, width) stage `index` may take."""
        planes = self.stage_planes(index)
        return [(r, k, w) for r in self.preset.radix_choices(planes)
                for k in self.cardinalities(r) for w in self.preset.width_choices(r, planes)]

    def sample(self, rng: Any) -> ArchSpec:
        """A covered architecture, one uniform choice per axis, from a numpy `Generator`."""
        return ResNeStSpace(self.preset).sample(rng)

    def largest(self) -> ArchSpec:
        """Every stage at its deepest, with its largest radix, cardinality and width."""
        return self._corner(max)

    def smallest(self) -> ArchSpec:
        """Every stage at its shallowest, with its smallest radix (0, no attention, when covered),
        cardinality and width: the fewest parameters and MACs the supernet covers."""
        return self._corner(min)

    def _corner(self, pick: Any) -> ArchSpec:
        stages = []
        for i, depths in enumerate(self.stage_depths):
            planes = self.stage_planes(i)
            radix = pick(self.preset.radix_choices(planes))
            stages.append(StageSpec(pick(depths), radix, pick(self.cardinalities(radix)),
                                    pick(self.preset.width_choices(radix, planes))))
        return ArchSpec(stages=tuple(stages), **{name: getattr(self, name) for name in FIXED_AXES})

    def violations(self, spec: ArchSpec) -> list[str]:
        """Each way `spec` lies outside this supernet, naming the field, its value and what the
        supernet supports (empty when covered)."""
        if len(spec.stages) != len(self.stage_depths):
            return [f"stages has {len(spec.stages)} entries; this supernet has "
                    f"{len(self.stage_depths)} stages"]
        attention = any(stage.radix > 0 for stage in spec.stages)
        out = [f"{name}={getattr(spec, name)!r}: this supernet is built for "
               f"{name}={getattr(self, name)!r} (fixed per supernet)"
               for name in FIXED_AXES
               if getattr(spec, name) != getattr(self, name)
               and (attention or name not in ATTENTION_AXES)]
        for i, (stage, (low, high)) in enumerate(zip(spec.stages, self.stage_depths,
                                                     strict=True)):
            if not low <= stage.depth <= high:
                out.append(f"stages[{i}].depth={stage.depth}: this supernet has {low} to {high} "
                           "blocks in that stage")
            if stage.radix not in self.radix:
                out.append(f"stages[{i}].radix={stage.radix}: this supernet covers radix in "
                           f"{self.radix}")
            elif stage.cardinality not in self.cardinalities(stage.radix):
                out.append(f"stages[{i}].cardinality={stage.cardinality}: this supernet covers "
                           f"{self.cardinalities(stage.radix)} at radix {stage.radix}")
            if stage.width not in self.width:
                out.append(f"stages[{i}].width={stage.width}: this supernet covers width in "
                           f"{self.width}")
        return out



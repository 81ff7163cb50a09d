"""Progressive shrinking (Once-for-All): the part of the space the sandwich draws its smallest and
random sub-networks from opens in phases over the training steps (torch-free).

A `Region` says which elastic axes are open; a closed axis stays at its largest value (given the
stage's radix), so the largest sub-network is the same in every region and the region grows
monotonically. A schedule is a tuple of regions, the last one the whole space; `phase_of` splits
a training's steps into equal shares, one per region, so a schedule fits any epoch budget
(per step, not per epoch: 4 epochs still see all 5 phases) and a resumed run is in the phase an
uninterrupted one would be.

Schedules (`SupernetTrainConfig.shrink`, `--shrink`):
- `off`: the whole space from the first step (BigNAS's one-stage training; the default).
- `ofa`: Once-for-All's order: only the largest, then elastic depth, then width, then
  cardinality (OFA's width inside each group), then radix.
- `family-first`: the radix families first, each at its largest radix (0, 1 and the largest
  >= 2), then depth, width, cardinality, then every radix. The families share no block weights
  (only the stem, the shortcuts and the classifier), so opening them early costs little of the
  interference shrinking avoids, and gives the plain and sigmoid families, which the largest
  never trains, the whole budget instead of its last phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.supernet.config import FIXED_AXES, SupernetConfig
from nas.supernet.layout import family_of
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec, StageSpec

RADIX_STATES = ("largest", "families", "all")


@dataclass(frozen=True)
class Region:
    """The open part of a supernet's space: `depth`, `width` and `cardinality` open or at their
    largest; `radix` `largest` (only the largest), `families` (the largest of each weight family)
    or `all`."""

    depth: bool = True
    width: bool = True
    cardinality: bool = True
    radix: str = "all"

    def __post_init__(self) -> None:
        if self.radix not in RADIX_STATES:
            raise UserError(f"radix must be one of {', '.join(RADIX_STATES)}, got "
                            f"{self.radix!r}")

    @property
    def whole(self) -> bool:
        return self.depth and self.width and self.cardinality and self.radix == "all"

    @property
    def label(self) -> str:
        """The open axes, e.g. `radix families+depth`; `largest` when none is, `all` when
        every one is."""
        if self.whole:
            return "all"
        axes = ["radix families"] if self.radix == "families" else []
        axes += [name for name in ("depth", "width", "cardinality") if getattr(self, name)]
        if self.radix == "all":
            axes.append("radix")
        return "+".join(axes) or "largest"

    def choices(self, config: SupernetConfig, stage: int
                ) -> list[tuple[tuple[int, ...], int, tuple[int, ...], tuple[int, ...]]]:
        """Stage `stage`'s open values: (depths, radix, cardinalities, widths) per open radix."""
        planes = config.stage_planes(stage)
        low, high = config.stage_depths[stage]
        depths = tuple(range(low, high + 1)) if self.depth else (high,)
        out = []
        for radix in self.radixes(config, stage):
            cards = config.cardinalities(radix)
            widths = config.preset.width_choices(radix, planes)
            out.append((depths, radix, cards if self.cardinality else (max(cards),),
                        widths if self.width else (max(widths),)))
        return out

    def radixes(self, config: SupernetConfig, stage: int) -> tuple[int, ...]:
        """The radix values open in stage `stage`."""
        allowed = config.preset.radix_choices(config.stage_planes(stage))
        if self.radix == "all":
            return allowed
        if self.radix == "largest":
            return (max(allowed),)
        return tuple(r for r in allowed
                     if r == max(x for x in allowed if family_of(x) == family_of(r)))

    def smallest(self, config: SupernetConfig) -> ArchSpec:
        """The region's smallest sub-network: every open axis at its least, the others at their
        largest (the whole region: `config.smallest()`)."""
        stages = []
        for i in range(len(config.stage_depths)):
            depths, radix, cards, widths = min(self.choices(config, i), key=lambda c: c[1])
            stages.append(StageSpec(min(depths), radix, min(cards), min(widths)))
        return _spec(config, stages)

    def sample(self, config: SupernetConfig, rng: Any) -> ArchSpec:
        """A sub-network of the region, one uniform choice per open axis, from a numpy
        `Generator` (the whole region: `config.sample(rng)`, the same draws)."""
        if self.whole:
            return config.sample(rng)
        stages = []
        for i in range(len(config.stage_depths)):
            options = self.choices(config, i)
            depths, radix, cards, widths = options[_pick(rng, len(options))]
            stages.append(StageSpec(depths[_pick(rng, len(depths))], radix,
                                    cards[_pick(rng, len(cards))],
                                    widths[_pick(rng, len(widths))]))
        return _spec(config, stages)

    def violations(self, config: SupernetConfig, spec: ArchSpec) -> list[str]:
        """Each way covered `spec` lies outside this region (empty when inside)."""
        out = []
        for i, stage in enumerate(spec.stages):
            match = [c for c in self.choices(config, i) if c[1] == stage.radix]
            if not match:
                out.append(f"stages[{i}].radix={stage.radix} is closed ({self.label})")
                continue
            depths, _, cards, widths = match[0]
            for name, value, open_ in (("depth", stage.depth, depths),
                                       ("cardinality", stage.cardinality, cards),
                                       ("width", stage.width, widths)):
                if value not in open_:
                    out.append(f"stages[{i}].{name}={value} is closed ({self.label})")
        return out


WHOLE = Region()
SCHEDULES: dict[str, tuple[Region, ...]] = {
    "off": (WHOLE,),
    "ofa": (Region(False, False, False, "largest"), Region(True, False, False, "largest"),
            Region(True, True, False, "largest"), Region(True, True, True, "largest"), WHOLE),
    "family-first": (Region(False, False, False, "families"),
                     Region(True, False, False, "families"),
                     Region(True, True, False, "families"),
                     Region(True, True, True, "families"), WHOLE),
}


def schedule(name: Any, option: str = "shrink") -> tuple[Region, ...]:
    """The regions of schedule `name`, or one UserError line naming `option` and the valid
    names."""
    if not isinstance(name, str) or name not in SCHEDULES:
        raise UserError(f"{option} must be one of {', '.join(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name]


def phase_of(step: int, total: int, phases: int) -> int:
    """The phase (0-based) of training step `step` of `total`: equal shares of the steps."""
    return min(phases - 1, step * phases // max(total, 1))


def _pick(rng: Any, n: int) -> int:
    return int(rng.integers(n)) if n > 1 else 0


def _spec(config: SupernetConfig, stages: list[StageSpec]) -> ArchSpec:
    return ArchSpec(stages=tuple(stages), **{name: getattr(config, name) for name in FIXED_AXES})


__all__ = ["RADIX_STATES", "SCHEDULES", "WHOLE", "Region", "phase_of", "schedule"]

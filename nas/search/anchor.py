"""The anchors: cheap corners of the space, trained first when an objective is a cost, so the
cheap end of the front is covered from the start.

`families` (the default) trains the cheapest corner of each (stem, avg_down) family: those two
global axes change every block's input path at almost no cost, and on ResNeSt-Bench they decide
most of the accuracy (docs/benchmarks.md), so four cheap trials tell the sampler where the good
families are. `cheapest` trains only the space's cheapest corner; `none` trains no anchor.
"""

from __future__ import annotations

import itertools

from nas.experiment import ExperimentConfig
from nas.models.costs import static_costs
from search_spaces.resnest_space import AnswerTrial, ResNeStSpace
from search_spaces.spec import ArchSpec


def corner_specs(space: ResNeStSpace, config: ExperimentConfig) -> list[ArchSpec]:
    """The space's cheapest-looking corners: every binary choice at the smallest sizes."""
    p = space.preset
    specs = []
    radix = min(p.usable_radix)
    cardinality = min(p.cardinality if radix == 0 else p.attention_cardinalities)
    for stem, avg_down, avd in itertools.product(p.stem, p.avg_down, p.avd):
        for avd_first in p.avd_first_choices_given_avd(avd):
            specs.append(space.suggest(AnswerTrial({
                "stem": stem, "stem_width": min(p.stem_width), "base_planes": min(p.base_planes),
                "avg_down": avg_down, "avd": avd, "avd_first": avd_first,
                "attn_reduction": max(p.attn_reduction), "attn_min_width": min(p.attn_min_width),
                "dropout": p.dropout[0],
                **{f"s{i + 1}_{k}": v for i, (low, _) in enumerate(p.stage_depths)
                   for k, v in (("depth", low), ("radix", radix), ("cardinality", cardinality),
                                ("width", min(p.width)))},
            })).replace(num_classes=config.num_classes, in_channels=config.in_channels))
    return specs


ANCHORS = ("families", "cheapest", "none")


def family_corners(space: ResNeStSpace, config: ExperimentConfig) -> list[ArchSpec]:
    """The cheapest corner of each (stem, avg_down) family, cheapest first; the first is
    `cheapest_corner`."""
    picks: dict[tuple[str, bool], ArchSpec] = {}
    for spec in corner_specs(space, config):
        family = (spec.stem, spec.avg_down)
        if family not in picks or _cost(spec, config) < _cost(picks[family], config):
            picks[family] = spec
    return sorted(picks.values(), key=lambda s: _cost(s, config))  # stable: ties keep order


def anchor_specs(space: ResNeStSpace, config: ExperimentConfig) -> list[ArchSpec]:
    """The anchors `config.anchor` names, in the order they are trained."""
    if config.anchor == "families":
        return family_corners(space, config)
    return [cheapest_corner(space, config)] if config.anchor == "cheapest" else []


def _cost(spec: ArchSpec, config: ExperimentConfig) -> tuple[float, str]:
    return static_costs(spec, config.image_size).macs, spec.tag


def cheapest_corner(space: ResNeStSpace, config: ExperimentConfig) -> ArchSpec:
    """The corner with the fewest MACs at the search's image size: evaluated first, it anchors
    the cheap end of the front, which random proposals rarely reach in a space this wide."""
    return min(corner_specs(space, config), key=lambda s: _cost(s, config))

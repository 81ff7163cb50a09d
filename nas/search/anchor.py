"""The anchor: the space's cheapest corner, trained first when an objective is a cost, so the
cheap end of the front is covered from the start."""

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


def cheapest_corner(space: ResNeStSpace, config: ExperimentConfig) -> ArchSpec:
    """The corner with the fewest MACs at the search's image size: evaluated first, it anchors
    the cheap end of the front, which random proposals rarely reach in a space this wide."""
    return min(corner_specs(space, config),
               key=lambda s: (static_costs(s, config.image_size).macs, s.tag))

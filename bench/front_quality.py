"""How good a front is, and what a search spent: the one definition every search bench uses.

Compute: training MAC-epochs, the sum over every trained epoch of the network's MACs per image at
the training size. Every epoch of a protocol sees the same images, so this is proportional to
the training FLOPs whatever the trial's architecture, and does not depend on the machine.

Hypervolume: objectives (val top-1 in [0, 1], log10 MACs), reference point (accuracy 0, log10 of
the largest MACs of the small `resnest` space at the training size), normalised by the box up to
(accuracy 1, log10 of its smallest MACs): 1.0 is a perfect model at the cheapest architecture.
Log MACs because the space spans two orders of magnitude.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable

import numpy as np

from nas.experiment import ExperimentConfig
from nas.models.costs import static_costs
from nas.search.anchor import corner_specs
from nas.search.pareto import hypervolume, pareto_mask
from search_spaces import UserError, get_space
from search_spaces.resnest_space import AnswerTrial


@functools.cache
def macs_range(image_size: int, num_classes: int = 10, in_channels: int = 1) -> tuple[float, float]:
    """(smallest, largest) MACs of the small resnest space at `image_size`: the cheapest corners
    (`nas.search.anchor.corner_specs`) and every valid all-largest corner. Cached: every replay
    of a search normalises by it."""
    space = get_space("resnest")
    p = space.preset
    config = ExperimentConfig(name="x", space="resnest", preset="small", data="digits",
                              image_size=image_size, objectives=("accuracy", "macs"), epochs=1,
                              trials=1, time_budget_s=1.0, sampler="tpe", pruner="none", seed=0,
                              storage="", num_classes=num_classes, in_channels=in_channels)
    low = min(static_costs(s, image_size).macs for s in corner_specs(space, config))
    high = 0
    for stem, avg_down, avd, first, radix, card in itertools.product(
            p.stem, p.avg_down, p.avd, p.avd_first, p.usable_radix, p.cardinality):
        answers = {"stem": stem, "stem_width": max(p.stem_width), "base_planes": max(p.base_planes),
                   "avg_down": avg_down, "avd": avd, "avd_first": first,
                   "attn_reduction": min(p.attn_reduction), "attn_min_width": max(p.attn_min_width),
                   "dropout": 0.0}
        for i, (_, deepest) in enumerate(p.stage_depths):
            answers.update({f"s{i + 1}_depth": deepest, f"s{i + 1}_radix": radix,
                            f"s{i + 1}_cardinality": card, f"s{i + 1}_width": max(p.width)})
        try:
            spec = space.suggest(AnswerTrial(answers)).replace(num_classes=num_classes,
                                                               in_channels=in_channels)
            high = max(high, static_costs(spec, image_size).macs)
        except (UserError, KeyError):
            continue
    return float(low), float(high)


def normalised_hypervolume(points: Iterable[tuple[float, float]], low: float,
                           high: float) -> float:
    """Normalised hypervolume of (accuracy, MACs) points (see the module docstring); points at or
    beyond the reference add nothing."""
    values = np.array([[a, np.log10(m)] for a, m in points], dtype=float).reshape(-1, 2)
    if not len(values):
        return 0.0
    box = np.log10(high) - np.log10(low)
    return hypervolume(values, [True, False], [0.0, np.log10(high)]) / box


def front_of(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (accuracy max, MACs min) points."""
    if not points:
        return []
    mask = pareto_mask(np.array(points, dtype=float), [True, False])
    return [int(i) for i in np.flatnonzero(mask)]


def dominates(front: list[tuple[float, float]], point: tuple[float, float],
              margin: float) -> bool:
    """Whether some front member has accuracy above `point`'s by more than `margin` at no more
    MACs."""
    return any(a > point[0] + margin and m <= point[1] for a, m in front)


__all__ = ["dominates", "front_of", "macs_range", "normalised_hypervolume"]

"""The hand-designed family, re-targeted to small inputs: the baselines a search must beat.

Each pattern of the ResNeSt paper's comparisons (ResNet-D, ResNeXt-D and the ResNeSt-50-fast
radix/cardinality/width patterns) is kept as its authors wrote it (deep stem, avg-down shortcuts,
avd where the pattern has it) and scaled over the small preset's cost range by the two knobs the
preset offers: base planes (16, 32) and blocks per stage (1, 2). The points need not lie inside the
preset (ResNeXt-D 8x16d has 8 groups, 2s2x40d a width of 40): they are the family, not samples.
"""

from __future__ import annotations

from search_spaces.spec import ArchSpec, uniform_stages

# pattern name -> (radix, cardinality, width, avd, avd_first): the paper's notation
# `{radix}s{cardinality}x{width}d`; ResNeXt-D keeps ResNeXt-50's 128 grouped channels at 64 planes.
PATTERNS: dict[str, tuple[int, int, int, bool, bool]] = {
    "resnet-d": (0, 1, 64, False, False),
    "resnext-d-4x32d": (0, 4, 32, False, False),
    "resnext-d-8x16d": (0, 8, 16, False, False),
    "resnest-1s1x64d": (1, 1, 64, True, True),
    "resnest-2s1x64d": (2, 1, 64, True, True),
    "resnest-4s1x64d": (4, 1, 64, True, True),
    "resnest-2s2x40d": (2, 2, 40, True, True),
    "resnest-1s4x24d": (1, 4, 24, True, True),
}
# (base planes, blocks per stage) from the cheapest to the dearest scale of each pattern.
SCALES: tuple[tuple[int, int], ...] = ((16, 1), (16, 2), (32, 1), (32, 2))


def hand_designed(num_classes: int = 10, in_channels: int = 1) -> dict[str, ArchSpec]:
    """Every pattern at every scale, named `PATTERN-bPLANES-dDEPTH` (e.g. `resnet-d-b16-d1`),
    for small inputs with `num_classes` classes and `in_channels` channels."""
    points = {}
    for name, (radix, cardinality, width, avd, avd_first) in PATTERNS.items():
        for planes, depth in SCALES:
            points[f"{name}-b{planes}-d{depth}"] = ArchSpec(
                stages=uniform_stages((depth,) * 4, radix, cardinality, width),
                stem="deep", stem_width=planes // 2, base_planes=planes, avg_down=True,
                avd=avd, avd_first=avd_first, num_classes=num_classes, in_channels=in_channels,
                input_regime="small",
            )
    return points


__all__ = ["PATTERNS", "SCALES", "hand_designed"]

"""The blocks a spec builds, as plain tuples (torch-free): the one place that maps a spec to its
network's structure. The builder, the closed-form costs and the export all read this plan."""

from __future__ import annotations

from typing import NamedTuple

from search_spaces.spec import EXPANSION, ArchSpec


class BlockArgs(NamedTuple):
    """Constructor arguments of one `Bottleneck`; hashable, so cost caches can key on it."""

    in_channels: int
    planes: int
    group_width: int
    attn_width: int
    radix: int
    cardinality: int
    stride: int
    avd: bool
    avd_first: bool
    avg_down: bool


def block_plan(spec: ArchSpec) -> list[list[BlockArgs]]:
    """The blocks of every stage, in order (the one place that maps a spec to blocks)."""
    plan, in_channels = [], spec.stem_out_channels
    for i, stage in enumerate(spec.stages):
        planes = spec.stage_planes(i)
        attn = spec.attention_width(i) if stage.radix >= 1 else 0
        blocks = []
        for j in range(stage.depth):
            blocks.append(BlockArgs(
                in_channels, planes, spec.group_width(i), attn, stage.radix, stage.cardinality,
                2 if (i > 0 and j == 0) else 1, spec.avd, spec.avd_first, spec.avg_down,
            ))
            in_channels = planes * EXPANSION
        plan.append(blocks)
    return plan

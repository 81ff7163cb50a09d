"""The parts a network is made of, as latency tables key them: its stem, each block (by its
constructor arguments and input side) and its head; and every distinct part a space can produce.

A part's key names exactly what decides its computation at its input: arguments that change
nothing are normalised away (avd and avd_first without a stride, avg_down without a shortcut
conv; radix 0 has no attention width already), so equal computations share one entry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.models.network import Bottleneck, make_stem
from search_spaces import counts
from search_spaces.block_plan import BlockArgs, block_plan
from search_spaces.errors import SpecError
from search_spaces.resnest_space import ResNeStSpace
from search_spaces.spec import EXPANSION, ArchSpec, StageSpec

KINDS = ("stem", "block", "head")


@dataclass(frozen=True)
class Part:
    """One part at its input shape (channels, side, side); `key` identifies it in a table:
    `kind(constructor arguments)@{input side}px`, e.g. `stem(deep,8,1,small)@16px`, a block's
    arguments in `BlockArgs` order, `head(channels,classes)@2px`."""

    kind: str
    args: tuple[Any, ...]
    input_shape: tuple[int, int, int]

    @property
    def key(self) -> str:
        body = ",".join(str(int(a)) if isinstance(a, bool) else str(a) for a in self.args)
        return f"{self.kind}({body})@{self.input_shape[1]}px"

    def build(self) -> nn.Module:
        """The part as a module (seeded weights: latency does not depend on them)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if self.kind == "stem":
                return StemPart(*self.args)
            if self.kind == "block":
                return Bottleneck(*self.args)
            return HeadPart(*self.args)


class StemPart(nn.Module):
    """The network's stem as `ResNeSt.forward_features` runs it: conv1, bn1, act1, maxpool."""

    def __init__(self, stem: str, width: int, in_channels: int, input_regime: str) -> None:
        super().__init__()
        self.conv1, self.bn1, self.maxpool = make_stem(stem, width, in_channels, input_regime)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))


class HeadPart(nn.Module):
    """The network's head as `ResNeSt.forward_head` runs it in eval: global pool, linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def normalised(args: BlockArgs) -> BlockArgs:
    """The block's arguments with those that change nothing reset (see the module docstring)."""
    if args.stride == 1:
        args = args._replace(avd=False, avd_first=False)
    if args.stride == 1 and args.in_channels == args.planes * EXPANSION:
        args = args._replace(avg_down=False)
    return args


def parts_of(spec: ArchSpec, image_size: int) -> list[Part]:
    """The parts of `spec`'s network at `image_size`, in forward order (repeats included)."""
    _, sides, head_side = counts.block_sides(spec, image_size)
    parts = [Part("stem", (spec.stem, spec.stem_width, spec.in_channels, spec.input_regime),
                  (spec.in_channels, image_size, image_size))]
    for stage, stage_sides in zip(block_plan(spec), sides, strict=True):
        for args, side in zip(stage, stage_sides, strict=True):
            parts.append(Part("block", tuple(normalised(args)), (args.in_channels, side, side)))
    parts.append(Part("head", (spec.feature_channels, spec.num_classes),
                      (spec.feature_channels, head_side, head_side)))
    return parts


def _stage_choices(space: ResNeStSpace, index: int, base_planes: int) -> list[StageSpec]:
    """Every (radix, cardinality, width) the space offers stage `index` at `base_planes` (the
    space's own conditions), at the stage's deepest depth up to 2: both block positions."""
    p = space.preset
    planes = base_planes * 2**index
    depth = min(2, p.stage_depths[index][1])
    out = []
    for radix in p.radix_choices(planes):
        cards = p.cardinality if radix == 0 else p.attention_cardinalities
        for card, width in itertools.product(cards, p.width_choices(radix, planes)):
            out.append(StageSpec(depth, radix, card, width))
    return out


def space_parts(space: ResNeStSpace, image_size: int, num_classes: int,
                in_channels: int) -> dict[str, Part]:
    """Every distinct part the space can produce at `image_size` for the task, by key.

    A stage's blocks depend on the other stages only through their planes (fixed by
    `base_planes`), so varying one stage at a time over every global choice reaches every part."""
    p = space.preset
    uses_attention = any(r > 0 for r in p.usable_radix)
    found: dict[str, Part] = {}
    for stem, stem_width, base, avg_down, (avd, avd_first), reduction, min_width in (
            itertools.product(p.stem, p.stem_width, p.base_planes, p.avg_down,
                              [(a, f) for a in p.avd for f in p.avd_first_choices_given_avd(a)],
                              p.attn_reduction if uses_attention else p.attn_reduction[:1],
                              p.attn_min_width if uses_attention else p.attn_min_width[:1])):
        choices = [_stage_choices(space, i, base) for i in range(len(p.stage_depths))]
        defaults = [StageSpec(1, *_fields(c[0])) for c in choices]
        common = dict(stem=stem, stem_width=stem_width, base_planes=base, avg_down=avg_down,
                      avd=avd, avd_first=avd_first, attn_reduction=reduction,
                      attn_min_width=min_width, num_classes=num_classes,
                      in_channels=in_channels, input_regime=p.input_regime)
        try:
            spec = ArchSpec(stages=tuple(defaults), **common)
        except SpecError:
            continue
        if spec.min_image_size > image_size:
            continue
        whole = parts_of(spec, image_size)
        for part in (whole[0], whole[-1]):  # stem and head depend on global choices only
            found.setdefault(part.key, part)
        for index, options in enumerate(choices):
            for option in options:
                stages = tuple(option if i == index else d for i, d in enumerate(defaults))
                try:
                    spec = ArchSpec(stages=stages, **common)
                except SpecError:  # the space cannot produce it either
                    continue
                sides = counts.block_sides(spec, image_size)[1][index]
                for args, side in zip(block_plan(spec)[index], sides, strict=True):
                    part = Part("block", tuple(normalised(args)), (args.in_channels, side, side))
                    found.setdefault(part.key, part)
    return found


def _fields(stage: StageSpec) -> tuple[int, int, int]:
    return stage.radix, stage.cardinality, stage.width

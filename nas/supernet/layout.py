"""How a block's weights are stored in the supernet and sliced for one sub-network (torch-free).

Every stored tensor has named axes: `r` split, `g` cardinal group, `i` input channel of a split's
3x3 conv within its group, `o` output channel of the 3x3 within its group, `a` attention hidden
unit within its group, `in`/`out` block input/output channels, `kh`/`kw` kernel. A sub-network
takes the first n entries of every axis (n from `choice_sizes`) and reshapes them into the
standalone network's tensor; the reshape order is the one `nas.models.network` uses, so the
result loads into `build_model(spec)` strictly:

- plain (radix 0): conv1 rows (g, i); the grouped 3x3 (g, o, i); conv3 columns (g, o).
- sigmoid (radix 1) and softmax (radix >= 2): conv1 rows (r, g, i), the split conv's groups in
  its order (r major, then g); its output rows (r, g, o); fc1 (g, a, o); fc2 rows cardinal-major
  (g, r, o), as the network reshapes its logits; conv3 columns (g, o).

So a group's channels are always the first ones of that group's slot (groups stay aligned across
widths), and a grouped conv is stored once per group, its larger group counts taking more
diagonal blocks (the off-diagonal blocks of a dense weight would never be used).
"""

from __future__ import annotations

import math
from typing import NamedTuple

FAMILIES = ("plain", "sigmoid", "softmax")


def family_of(radix: int) -> str:
    """The weight family of a radix: 0 plain conv, 1 sigmoid gate, >= 2 softmax over splits."""
    return FAMILIES[min(radix, 2)]


class Weight(NamedTuple):
    """A stored conv weight or bias: its standalone name, axes, and the axes of its fan-out
    (Kaiming init; empty for a bias, which starts at zero)."""

    name: str
    axes: tuple[str, ...]
    fan_out: tuple[str, ...] = ()


def _w(name: str, axes: str, fan_out: str = "") -> Weight:
    return Weight(name, tuple(axes.split()), tuple(fan_out.split()))


# Weights and BatchNorms of each family, named as in `nas.models.network.Bottleneck`.
WEIGHTS: dict[str, tuple[Weight, ...]] = {
    "plain": (
        _w("conv1.weight", "g i in", "g i"),
        _w("conv2.weight", "g o i kh kw", "g o kh kw"),
        _w("conv3.weight", "out g o", "out"),
    ),
    "sigmoid": (
        _w("conv1.weight", "r g i in", "r g i"),
        _w("conv2.conv.weight", "r g o i kh kw", "r g o kh kw"),
        _w("conv2.fc1.weight", "g a o", "g a"),
        _w("conv2.fc1.bias", "g a"),
        _w("conv2.fc2.weight", "g r o a", "g r o"),
        _w("conv2.fc2.bias", "g r o"),
        _w("conv3.weight", "out g o", "out"),
    ),
}
WEIGHTS["softmax"] = WEIGHTS["sigmoid"]
BATCHNORMS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "plain": (("bn1", ("g", "i")), ("bn2", ("g", "o")), ("bn3", ("out",))),
    "sigmoid": (("bn1", ("r", "g", "i")), ("conv2.bn0", ("r", "g", "o")),
                ("conv2.bn1", ("g", "a")), ("bn3", ("out",))),
}
BATCHNORMS["softmax"] = BATCHNORMS["sigmoid"]
BN_PARAMETERS = ("weight", "bias")
BN_BUFFERS = ("running_mean", "running_var")  # plus num_batches_tracked, a scalar


def choice_sizes(radix: int, cardinality: int, channels: int, attn: int, in_channels: int,
                 out_channels: int) -> dict[str, int]:
    """Axis sizes of one sub-network's block: `channels` per group (the group width over the
    cardinality), `attn` hidden attention units per group."""
    splits = max(radix, 1)
    return {"r": splits, "g": cardinality, "o": channels, "i": channels // splits, "a": attn,
            "in": in_channels, "out": out_channels, "kh": 3, "kw": 3}


def bound_sizes(choices: list[dict[str, int]]) -> dict[str, int]:
    """The stored axis sizes: the largest each axis takes over a family's choices."""
    return {axis: max(c[axis] for c in choices) for axis in choices[0]}


def store_name(name: str) -> str:
    """The attribute holding a standalone tensor (`conv2.fc1.weight` -> `conv2_fc1_weight`)."""
    return name.replace(".", "_")


def numel(axes: tuple[str, ...], sizes: dict[str, int]) -> int:
    return math.prod(sizes[a] for a in axes)

"""Order each group's bottleneck channels by importance, so width prefixes keep the best ones.

Once-for-All's channel sorting, per cardinal group (and per split, for a split's conv inputs) so
that groups stay aligned: a channel's importance is the L1 norm of the weights that read it in
the next layer. First the 3x3's output channels `o` of each group, by conv3's columns (one order
per group, shared by all of its splits, since the attention adds the splits channel by
channel); then the 3x3's input channels `i` of each group (and split), by the 3x3's columns,
carried back through conv1 and bn1. Parameters and BN statistics move together, so a sub-network
that uses every stored channel of those axes computes the same function before and after (for
the softmax family: radix 2, whose splits read the most inputs each, at the largest width and
cardinality); smaller widths then take the most important channels. The attention MLP's hidden
units keep their order (their count follows from the width by the spec's rounding rule).

Reorder between training phases, not during one: an optimizer's per-parameter state (momentum)
is not permuted with the weights.
"""

from __future__ import annotations

import torch

from nas.supernet.supernet import Supernet

# The 3x3's standalone name in each family (its output axis `o`, input axis `i`).
CONV3X3 = {"plain": "conv2.weight", "sigmoid": "conv2.conv.weight",
           "softmax": "conv2.conv.weight"}


def importance_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort the last axis of `scores` from most to least important (stable)."""
    return torch.argsort(scores, dim=-1, descending=True, stable=True)


@torch.no_grad()
def reorder_by_importance(supernet: Supernet) -> None:
    """Permute every branch's bottleneck channels by importance, in place."""
    supernet.bn_spec = None  # smaller sub-networks now hold other channels
    for branch in supernet.branches():
        conv = CONV3X3[branch.family]
        branch.permute("o", ("g",), importance_order(branch.l1("conv3.weight", ("g", "o"))))
        groups = ("g",) if branch.family == "plain" else ("r", "g")
        branch.permute("i", groups, importance_order(branch.l1(conv, (*groups, "i"))))

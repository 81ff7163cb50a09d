"""Split-attention 3x3 convolution (ResNeSt's "SplAt" block), written for speed and exportability.

Parameter names (`conv`, `bn0`, `fc1`, `bn1`, `fc2`) and shapes match timm's `SplitAttn` and the
authors' `SplAtConv2d`, so their state dicts load unchanged. The forward differs from timm's only
in how it is computed (see `SplitAttention.forward`); the function is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitAttention(nn.Module):
    """3x3 conv to `radix` splits of `channels`, gated by a per-sample attention over the splits.

    radix 1: sigmoid gate (SE-like). radix >= 2: softmax over the splits within each cardinal group.
    `attn_channels` is the hidden width of the attention MLP; it must be divisible by `cardinality`.
    """

    def __init__(self, channels: int, attn_channels: int, radix: int, cardinality: int,
                 stride: int = 1) -> None:
        super().__init__()
        if radix < 1:
            raise ValueError(f"radix must be >= 1 for split attention, got {radix}")
        if channels % cardinality or attn_channels % cardinality:
            raise ValueError(
                f"cardinality {cardinality} must divide channels {channels} and attention "
                f"width {attn_channels}"
            )
        self.radix = radix
        self.cardinality = cardinality
        self.channels = channels
        mid = channels * radix
        self.conv = nn.Conv2d(channels, mid, 3, stride, 1, groups=cardinality * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid)
        self.fc1 = nn.Conv2d(channels, attn_channels, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(attn_channels)
        self.fc2 = nn.Conv2d(attn_channels, mid, 1, groups=cardinality)

    def _pointwise(self, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
        """A 1x1 conv on (B, C, 1, 1): a plain GEMM when ungrouped (conv dispatch costs more)."""
        if self.cardinality == 1:
            return F.linear(x.flatten(1), weight.flatten(1), bias)[:, :, None, None]
        return F.conv2d(x, weight, bias, groups=self.cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv(x)), inplace=True)
        batch, radix, channels = x.shape[0], self.radix, self.channels
        # Pool first, then sum the splits: one pass over x and no (B, C, H, W) temporary. A sum
        # (scaled afterwards) rather than a mean: its backward is a free expand, where mean's
        # backward writes a full-size (B, R*C, H, W) tensor.
        gap = x.sum((2, 3), keepdim=True)
        if radix > 1:
            gap = gap.reshape(batch, radix, channels, 1, 1).sum(1)
        gap = gap * (1.0 / (x.shape[2] * x.shape[3]))
        hidden = F.relu(self.bn1(self._pointwise(gap, self.fc1.weight, self.fc1.bias)), inplace=True)
        attn = self._pointwise(hidden, self.fc2.weight, self.fc2.bias)
        if radix == 1:
            return x * torch.sigmoid(attn)
        # fc2 is cardinal-major (K, R, C/K); the conv output is radix-major (R, K, C/K).
        attn = attn.reshape(batch, self.cardinality, radix, -1).transpose(1, 2)
        attn = torch.softmax(attn, dim=1).reshape(batch, radix, channels, 1, 1)
        # reshape, not view: x may be channels_last (the reference pitfall under torch.compile).
        return (x.reshape(batch, radix, channels, x.shape[2], x.shape[3]) * attn).sum(1)

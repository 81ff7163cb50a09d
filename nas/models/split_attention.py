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
        height, width = x.shape[2], x.shape[3]
        # Global pooling as a sum scaled afterwards: sum's backward is a free expand, where
        # mean's backward writes a full-size tensor.
        scale = 1.0 / (height * width)
        if radix == 1:
            gap = x.sum((2, 3), keepdim=True) * scale
            return x * torch.sigmoid(self._attention_logits(gap))
        # reshape, not view: x may be channels_last (the reference pitfall under torch.compile).
        splits = x.reshape(batch, radix, channels, height, width)
        # Pool each split, then add the splits: no (B, C, H, W) temporary. Taken from `splits`
        # (not x) so both gradient paths meet on one tensor and accumulate in place.
        gap = splits.sum((3, 4)).sum(1)[:, :, None, None] * scale
        logits = self._attention_logits(gap)
        # fc2 is cardinal-major (K, R, C/K); the conv output is radix-major (R, K, C/K).
        logits = logits.reshape(batch, self.cardinality, radix, -1).transpose(1, 2)
        attn = torch.softmax(logits, dim=1).reshape(batch, radix, channels, 1, 1)
        if x.is_contiguous(memory_format=torch.channels_last):
            # A reduction over the radix would return NCHW and make every later layer convert
            # (timm's channels_last slowdown); elementwise ops keep the layout (~1.7x faster
            # than timm's tail + conv3 on CPU in channels_last).
            parts, weights = splits.unbind(1), attn.unbind(1)
            out = parts[0] * weights[0]
            for r in range(1, radix):
                out = torch.addcmul(out, parts[r], weights[r])
            return out
        return (splits * attn).sum(1)  # NCHW: one fused pass, faster than the loop

    def _attention_logits(self, gap: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.bn1(self._pointwise(gap, self.fc1.weight, self.fc1.bias)), inplace=True)
        return self._pointwise(hidden, self.fc2.weight, self.fc2.bias)

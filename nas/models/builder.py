"""Build a ResNeSt-family network from an `ArchSpec`.

`build_model` is a pure function of the spec: the same spec and torch seed give the same weights.
Module and parameter names follow timm's ResNet/ResNeSt (`conv1.{0,1,3,4,6}`, `bn1`,
`layerN.M.{conv1,bn1,conv2,...,downsample.{0,1,2}}`, `fc`), so timm state dicts load with
`strict=True` for every named point timm defines.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.models.split_attention import SplitAttention
from search_spaces.block_plan import block_plan
from search_spaces.registry import SpecLike, resolve_spec
from search_spaces.spec import EXPANSION, ArchSpec

MAX_STAGES = 6  # ArchSpec's limit


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (split attention, or grouped conv when radix is 0) -> 1x1, plus shortcut.

    Unused slots are `nn.Identity` rather than `None` so one forward serves every variant and
    scripts/exports without branches on module presence.
    """

    def __init__(self, in_channels: int, planes: int, group_width: int, attn_width: int,
                 radix: int, cardinality: int, stride: int, avd: bool, avd_first: bool,
                 avg_down: bool) -> None:
        super().__init__()
        out_channels = planes * EXPANSION
        use_avd = avd and stride > 1
        conv_stride = 1 if use_avd else stride
        self.conv1 = nn.Conv2d(in_channels, group_width, 1, bias=False)
        self.bn1 = _bn(group_width)
        self.act1 = nn.ReLU(inplace=True)
        pool = nn.AvgPool2d(3, stride, padding=1) if use_avd else nn.Identity()
        self.avd_first: nn.Module = pool if avd_first else nn.Identity()
        if radix >= 1:
            self.conv2: nn.Module = SplitAttention(
                group_width, attn_width, radix, cardinality, conv_stride
            )
            self.bn2: nn.Module = nn.Identity()
            self.act2: nn.Module = nn.Identity()
        else:
            self.conv2 = nn.Conv2d(group_width, group_width, 3, conv_stride, 1,
                                   groups=cardinality, bias=False)
            self.bn2 = _bn(group_width)
            self.act2 = nn.ReLU(inplace=True)
        self.avd_last: nn.Module = nn.Identity() if avd_first else pool
        self.conv3 = nn.Conv2d(group_width, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = _downsample(in_channels, out_channels, stride, avg_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avd_first(self.act1(self.bn1(self.conv1(x))))
        out = self.avd_last(self.act2(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        out += self.downsample(x)
        return self.act3(out)


def _downsample(in_channels: int, out_channels: int, stride: int, avg_down: bool) -> nn.Sequential:
    """ResNet-D shortcut (avg pool then 1x1 conv) or the classic strided 1x1 conv."""
    if avg_down:
        pool: nn.Module = (
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            if stride > 1 else nn.Identity()
        )
        return nn.Sequential(pool, nn.Conv2d(in_channels, out_channels, 1, bias=False),
                             _bn(out_channels))
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                         _bn(out_channels))


def make_stem(stem: str, width: int, in_channels: int, input_regime: str
              ) -> tuple[nn.Module, nn.BatchNorm2d, nn.Module]:
    """(conv1, bn1, maxpool) of the stem. The small-image regime keeps the layers but drops every
    stride and the max pool (total stem stride 1); the ImageNet regime has stride 4."""
    stride = 2 if input_regime == "imagenet" else 1
    if stem == "deep":
        conv1: nn.Module = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride, 1, bias=False), _bn(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), _bn(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False),
        )
        out_channels = 2 * width
    else:
        conv1 = nn.Conv2d(in_channels, width, 7, stride, 3, bias=False)
        out_channels = width
    pool: nn.Module = nn.MaxPool2d(3, 2, 1) if input_regime == "imagenet" else nn.Identity()
    return conv1, _bn(out_channels), pool


class ResNeSt(nn.Module):
    """Stem -> stages of bottlenecks -> global average pool -> dropout -> linear."""

    __jit_ignored_attributes__ = ["spec"]

    def __init__(self, spec: ArchSpec, num_classes: int) -> None:
        super().__init__()
        self.spec = spec  # introspection only; forward never reads it
        self.conv1, self.bn1, self.maxpool = make_stem(
            spec.stem, spec.stem_width, spec.in_channels, spec.input_regime
        )
        self.act1 = nn.ReLU(inplace=True)
        stages = [nn.Sequential(*(Bottleneck(*a) for a in blocks)) for blocks in block_plan(spec)]
        # timm's names layer1..layerN; absent stages are stateless identities so one static
        # forward (no loop over named children) scripts and exports for any depth.
        for i in range(MAX_STAGES):
            self.add_module(f"layer{i + 1}", stages[i] if i < len(stages) else nn.Identity())
        self.drop: nn.Module = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(spec.feature_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer6(self.layer5(self.layer4(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "train-mode forward needs batch size >= 2: BatchNorm normalises over the batch "
                "(the attention BN sees one 1x1 value per channel); use eval() for batch size 1"
            )
        return self.forward_head(self.forward_features(x))


def _init_weights(model: nn.Module) -> None:
    """timm's init: Kaiming-normal (fan_out) convs, BN gamma 1 / beta 0, and the last BN of every
    residual branch zeroed so each block starts as identity (helps deep nets train early)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)


def build_model(spec_or_name: SpecLike, num_classes: int | None = None) -> ResNeSt:
    """The network for a spec, a named point or a spec JSON path; `num_classes` overrides the spec."""
    spec = resolve_spec(spec_or_name)
    model = ResNeSt(spec, spec.num_classes if num_classes is None else num_classes)
    _init_weights(model)
    return model

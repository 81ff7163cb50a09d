"""The ResNeSt-family network in plain torch: split attention, bottleneck, stem, shortcut, network.

Torch-only on purpose (no project imports, constructors take plain numbers, never a spec):
`nas.models.builder` builds every searched model from this file and `nas.export.codegen` writes
it verbatim into every exported module, so search and export run one implementation. Module and
parameter names follow timm's ResNet/ResNeSt (`conv1.{0,1,3,4,6}`, `bn1`,
`layerN.M.{conv1,bn1,conv2,...,downsample.{0,1,2}}`, `fc`; split attention's `conv`, `bn0`,
`fc1`, `bn1`, `fc2`), so timm and ResNeSt-authors state dicts load with `strict=True`.

The backbone API follows timm too: `forward_features` (the last feature map), `forward_head`,
`num_features`, `feature_info` (channels and reduction of the stem and of every stage), and
`ResNeStFeatures`, timm's `features_only` model (a list of feature maps at `out_indices`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 4  # bottleneck output channels per plane
MAX_STAGES = 6  # layer1..layer6
# One bottleneck's constructor arguments, in order: (in_channels, planes, group_width, attn_width,
# radix, cardinality, stride, avd, avd_first, avg_down).
BlockRow = tuple[int, int, int, int, int, int, int, bool, bool, bool]


class SplitAttention(nn.Module):
    """3x3 conv to `radix` splits of `channels`, gated by a per-sample attention over the splits.

    radix 1: sigmoid gate (SE-like). radix >= 2: softmax over the splits within each cardinal group.
    `attn_channels` is the hidden width of the attention MLP; it must be divisible by `cardinality`.
    The forward differs from timm's `SplitAttn` only in how it is computed, not in what.
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
            # (timm's channels_last slowdown); elementwise ops keep the layout.
            parts, weights = splits.unbind(1), attn.unbind(1)
            out = parts[0] * weights[0]
            for r in range(1, radix):
                out = torch.addcmul(out, parts[r], weights[r])
            return out
        return (splits * attn).sum(1)  # NCHW: one fused pass, faster than the loop

    def _attention_logits(self, gap: torch.Tensor) -> torch.Tensor:
        hidden = self._pointwise(gap, self.fc1.weight, self.fc1.bias)
        hidden = F.relu(self.bn1(hidden), inplace=True)
        return self._pointwise(hidden, self.fc2.weight, self.fc2.bias)


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
            self.downsample = make_shortcut(in_channels, out_channels, stride, avg_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avd_first(self.act1(self.bn1(self.conv1(x))))
        out = self.avd_last(self.act2(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        out += self.downsample(x)
        return self.act3(out)


def make_shortcut(in_channels: int, out_channels: int, stride: int,
                  avg_down: bool) -> nn.Sequential:
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
    """(conv1, bn1, maxpool) of the "deep" (three 3x3 convs) or "plain" (one 7x7) stem. The
    "small" input regime keeps the layers but drops every stride and the max pool (total stem
    stride 1); the "imagenet" regime has stride 4."""
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


class FeatureInfo(list):
    """timm's `feature_info`: one dict per feature map, `num_chs` (channels), `reduction` (input
    side / map side) and `module` (the child whose output it is), with timm's accessors."""

    def channels(self, idx: int | None = None) -> list[int] | int:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None) -> object:
        return [info[key] for info in self] if idx is None else self[idx][key]


def feature_indices(count: int, out_indices: tuple[int, ...] | list[int] | None
                    ) -> tuple[int, ...]:
    """`out_indices` as increasing indices into `count` feature maps (negative ones count from the
    end, as in Python); None means all of them. Anything else is a ValueError saying what exists."""
    if out_indices is None:
        return tuple(range(count))
    given = tuple(out_indices)
    bad = [i for i in given if isinstance(i, bool) or not isinstance(i, int)
           or not -count <= i < count]
    chosen = sorted({i % count for i in given if i not in bad})
    if not given or bad or len(chosen) != len(given):
        problem = (f"index {bad[0]!r} does not exist" if bad else "no index given" if not given
                   else "an index repeats")
        raise ValueError(f"out_indices {given}: {problem}; this network has feature maps 0 "
                         f"(stem) to {count - 1} (layer{count - 1})")
    return tuple(chosen)


class ResNeSt(nn.Module):
    """Stem -> stages of bottlenecks -> global average pool -> dropout -> linear.

    `plan` holds one tuple of `BlockRow`s per stage (1 to MAX_STAGES stages); the classifier's
    width is the last block's output width. `num_classes=0` leaves the classifier out (timm's
    meaning): the forward then returns the pooled features.
    """

    def __init__(self, stem: str, stem_width: int, in_channels: int, input_regime: str,
                 plan: tuple[tuple[BlockRow, ...], ...], dropout: float,
                 num_classes: int) -> None:
        super().__init__()
        if not 1 <= len(plan) <= MAX_STAGES or not all(plan):
            raise ValueError(f"plan needs 1 to {MAX_STAGES} stages of at least one block, got "
                             f"stages of {[len(blocks) for blocks in plan]} blocks")
        # act1 is registered before maxpool: children in forward order, so torchvision's
        # IntermediateLayerGetter (BackboneWithFPN) runs the stem exactly as `forward` does.
        self.conv1, self.bn1, pool = make_stem(stem, stem_width, in_channels, input_regime)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = pool
        stages = [nn.Sequential(*(Bottleneck(*row) for row in blocks)) for blocks in plan]
        # timm's names layer1..layerN; absent stages are stateless identities so one static
        # forward (no loop over named children) scripts and exports for any depth.
        for i in range(MAX_STAGES):
            self.add_module(f"layer{i + 1}", stages[i] if i < len(stages) else nn.Identity())
        self.num_features = stages[-1][-1].bn3.num_features
        self.drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc: nn.Module = (nn.Linear(self.num_features, num_classes) if num_classes > 0
                              else nn.Identity())
        # Prefixes of trained tensors this model may lack by design (`load_pretrained`).
        self.pretrained_skip: tuple[str, ...] = ("fc.",)
        # Reductions: the stem's activation (stride 2 or 1), then each stage's first stride.
        reduction = 2 if input_regime == "imagenet" else 1
        self.feature_info = FeatureInfo(
            [{"num_chs": self.bn1.num_features, "reduction": reduction, "module": "act1"}])
        reduction *= 2 if input_regime == "imagenet" else 1  # the max pool
        for i, blocks in enumerate(plan):
            reduction *= blocks[0][6]
            self.feature_info.append({"num_chs": blocks[-1][1] * EXPANSION,
                                      "reduction": reduction, "module": f"layer{i + 1}"})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (unpooled)."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer6(self.layer5(self.layer4(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify a `forward_features` map; `pre_logits` stops before `fc`."""
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def check_batch(self, x: torch.Tensor) -> None:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "train-mode forward needs batch size >= 2: BatchNorm normalises over the batch "
                "(the attention BN sees one 1x1 value per channel); use eval() for batch size 1"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        return self.forward_head(self.forward_features(x))


class ResNeStFeatures(ResNeSt):
    """timm's `features_only` model: the network without its head and without the stages after
    the last feature map, whose forward returns the feature maps at `out_indices` (0 = the stem's
    activation, i = layer i; default all) in network order; `feature_info` describes those maps
    only. Its tensors are named as in `ResNeSt`, so a trained classifier's weights load into it
    (`load_pretrained` leaves out the head and the dropped stages)."""

    def __init__(self, stem: str, stem_width: int, in_channels: int, input_regime: str,
                 plan: tuple[tuple[BlockRow, ...], ...],
                 out_indices: tuple[int, ...] | list[int] | None = None) -> None:
        super().__init__(stem, stem_width, in_channels, input_regime, plan, 0.0, 0)
        self.out_indices = feature_indices(len(self.feature_info), out_indices)
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)
        dropped = range(self.out_indices[-1] + 1, len(plan) + 1)  # stages no map comes from
        for i in dropped:
            setattr(self, f"layer{i}", nn.Identity())
        self.pretrained_skip += tuple(f"layer{i}." for i in dropped)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        self.check_batch(x)
        x = self.act1(self.bn1(self.conv1(x)))
        features = [x] if 0 in self.out_indices else []
        x = self.maxpool(x)
        stages = (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5, self.layer6)
        for index, stage in enumerate(stages[:self.out_indices[-1]], start=1):  # none past it
            x = stage(x)
            if index in self.out_indices:
                features.append(x)
        return features


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load trained weights into `model` for fine-tuning or feature extraction: every tensor the
    model has, strictly (name and shape), except the classifier `fc.*`, which is kept as
    initialised where its shape differs (another class count); tensors of parts the model lacks
    by design (`pretrained_skip`: a head, a features-only model's dropped stages) are ignored.
    Returns the names kept as initialised; the first tensor that does not fit is a ValueError
    naming it."""
    own = model.state_dict()
    kept = [k for k in own if k.startswith("fc.") and k in state
            and tuple(state[k].shape) != tuple(own[k].shape)]
    for name, tensor in own.items():  # in the network's order: the first misfit is named
        if name in kept:
            continue
        if name not in state:
            raise ValueError(f"the weights have no tensor {name} (shape {tuple(tensor.shape)})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"tensor {name} has shape {tuple(state[name].shape)} in the weights "
                             f"but {tuple(tensor.shape)} in this network")
    skip = tuple(getattr(model, "pretrained_skip", ("fc.",)))
    extra = [k for k in state if k not in own and not k.startswith(skip)]
    if extra:
        raise ValueError(f"the weights hold tensor {extra[0]}, which this network does not have")
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in kept},
                          strict=not kept)
    return kept


def init_weights(model: nn.Module) -> None:
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

"""Parameters and MACs of a spec in closed form (torch-free), read from its block plan.

Each layer contributes what `torch.utils.flop_counter.FlopCounterMode` counts for it, halved:
a convolution or linear layer costs its weight count (bias excluded) times its output pixels;
BatchNorm, pooling, activations and elementwise ops cost nothing. Parameters are weights, conv
and linear biases, and BatchNorm's affine pair (running statistics are buffers). The tests check
both counts against torch on every named point and on samples of every preset.
"""

from __future__ import annotations

import functools

from search_spaces.block_plan import BlockArgs, block_plan
from search_spaces.errors import UserError
from search_spaces.spec import EXPANSION, ArchSpec

Count = tuple[int, int]  # (params, MACs of one image)


def params(spec: ArchSpec) -> int:
    """Trainable parameters of the network `spec` builds."""
    return _counts(spec, 1)[0]  # parameters do not depend on the input size


def macs(spec: ArchSpec, image_size: int) -> int:
    """Multiply-accumulates of one forward pass of ONE image of side `image_size`."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    return _counts(spec, image_size)[1]


@functools.lru_cache(maxsize=65536)
def _counts(spec: ArchSpec, image_size: int) -> Count:
    """(params, MACs) of stem, blocks and head (cached: ArchSpec compares and hashes by value)."""
    (n_params, n_macs), side = _stem(spec, image_size)
    for stage in block_plan(spec):
        for args in stage:
            (block_params, block_macs), side = _block(args, side)
            n_params += block_params
            n_macs += block_macs
    head_params, head_macs = _linear(spec.feature_channels, spec.num_classes)
    return n_params + head_params, n_macs + head_macs


def block_sides(spec: ArchSpec, image_size: int) -> tuple[int, list[list[int]], int]:
    """(stem input side, the input side of every block per stage, the head's input side): the
    feature-map sides the closed form walks through (latency tables key parts by them)."""
    _, side = _stem(spec, image_size)
    sides = []
    for stage in block_plan(spec):
        sides.append([])
        for args in stage:
            sides[-1].append(side)
            side = _block(args, side)[1]
    return image_size, sides, side


def _add(*counts: Count) -> Count:
    params_of, macs_of = zip(*counts, strict=True)
    return sum(params_of), sum(macs_of)


def _out(side: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution or floor-mode pooling."""
    return (side + 2 * padding - kernel) // stride + 1


def _out_ceil(side: int, kernel: int, stride: int) -> int:
    """Output side of an unpadded ceil-mode pooling (torch drops a window starting past the end)."""
    out = -(-(side - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= side else out


def _conv(cin: int, cout: int, kernel: int, side: int, groups: int = 1,
          bias: bool = False) -> Count:
    """A Conv2d whose output is `side` x `side`."""
    weights = cout * (cin // groups) * kernel * kernel
    return weights + (cout if bias else 0), weights * side * side


def _bn(channels: int) -> Count:
    return 2 * channels, 0


def _linear(cin: int, cout: int) -> Count:
    """A Linear layer with bias on one vector."""
    return cin * cout + cout, cin * cout


def _stem(spec: ArchSpec, side: int) -> tuple[Count, int]:
    """Stem counts and output side; mirrors `nas.models.network.make_stem`."""
    stride = 2 if spec.input_regime == "imagenet" else 1
    cin, width = spec.in_channels, spec.stem_width
    if spec.stem == "deep":
        side = _out(side, 3, stride, 1)
        count = _add(_conv(cin, width, 3, side), _bn(width), _conv(width, width, 3, side),
                     _bn(width), _conv(width, 2 * width, 3, side), _bn(2 * width))
    else:
        side = _out(side, 7, stride, 3)
        count = _add(_conv(cin, width, 7, side), _bn(width))
    if spec.input_regime == "imagenet":
        side = _out(side, 3, 2, 1)  # max pool
    return count, side


@functools.lru_cache(maxsize=65536)
def _block(b: BlockArgs, side: int) -> tuple[Count, int]:
    """Bottleneck counts and output side; mirrors `nas.models.network.Bottleneck`: with avd the
    3x3 keeps stride 1 and an AvgPool(3, stride, 1) before (avd_first) or after it strides.
    Cached: the blocks after a stage's first are equal."""
    out_channels = b.planes * EXPANSION
    use_avd = b.avd and b.stride > 1
    strided = _out(side, 3, b.stride, 1)  # the strided 3x3 conv and the avd pool agree
    conv2_side = side if use_avd and not b.avd_first else strided
    parts = [_conv(b.in_channels, b.group_width, 1, side), _bn(b.group_width)]
    if b.radix >= 1:
        parts.append(_split_attention(b, conv2_side))
    else:
        parts += [_conv(b.group_width, b.group_width, 3, conv2_side, b.cardinality),
                  _bn(b.group_width)]
    parts += [_conv(b.group_width, out_channels, 1, strided), _bn(out_channels)]
    if b.stride != 1 or b.in_channels != out_channels:
        if b.avg_down:
            short = _out_ceil(side, b.stride, b.stride) if b.stride > 1 else side
        else:
            short = _out(side, 1, b.stride, 0)
        parts += [_conv(b.in_channels, out_channels, 1, short), _bn(out_channels)]
    return _add(*parts), strided


def _split_attention(b: BlockArgs, side: int) -> Count:
    """`nas.models.network.SplitAttention`: the grouped 3x3 to radix splits, then an
    attention MLP (grouped 1x1 convs with bias) on the pooled 1x1 map."""
    mid = b.group_width * b.radix
    return _add(
        _conv(b.group_width, mid, 3, side, b.cardinality * b.radix), _bn(mid),
        _conv(b.group_width, b.attn_width, 1, 1, b.cardinality, bias=True), _bn(b.attn_width),
        _conv(b.attn_width, mid, 1, 1, b.cardinality, bias=True),
    )

"""Published architectures as specs: timm's ResNeSt models, the paper's ResNeSt-50-fast family, and
the radix-0 baselines (ResNet-50-D, ResNeXt-50-D 32x4d) the paper compares against."""

from __future__ import annotations

from search_spaces.spec import ArchSpec, uniform_stages

R50 = (3, 4, 6, 3)


def _resnest(depths: tuple[int, ...], radix: int = 2, cardinality: int = 1, width: int = 64,
             stem_width: int = 32, avd_first: bool = False, avd: bool = True) -> ArchSpec:
    return ArchSpec(
        stages=uniform_stages(depths, radix, cardinality, width),
        stem="deep",
        stem_width=stem_width,
        avg_down=True,
        avd=avd,
        avd_first=avd_first,
    )


def _fast(radix: int, cardinality: int, width: int) -> ArchSpec:
    return _resnest(R50, radix, cardinality, width, avd_first=True)


NAMED_POINTS: dict[str, ArchSpec] = {
    # timm's ResNeSt models (same configs as the authors' releases).
    "resnest14d": _resnest((1, 1, 1, 1)),
    "resnest26d": _resnest((2, 2, 2, 2)),
    "resnest50d": _resnest(R50),
    "resnest101e": _resnest((3, 4, 23, 3), stem_width=64),
    "resnest200e": _resnest((3, 24, 36, 3), stem_width=64),
    "resnest269e": _resnest((3, 30, 48, 8), stem_width=64),
    "resnest50d_1s4x24d": _fast(1, 4, 24),
    "resnest50d_4s2x40d": _fast(4, 2, 40),
    # The paper's ResNeSt-50-fast variants (avd before the 3x3 conv).
    "resnest50_fast_1s1x64d": _fast(1, 1, 64),
    "resnest50_fast_2s1x64d": _fast(2, 1, 64),
    "resnest50_fast_4s1x64d": _fast(4, 1, 64),
    "resnest50_fast_1s2x40d": _fast(1, 2, 40),
    "resnest50_fast_2s2x40d": _fast(2, 2, 40),
    "resnest50_fast_4s2x40d": _fast(4, 2, 40),
    "resnest50_fast_1s4x24d": _fast(1, 4, 24),
    # Radix-0 baselines: plain grouped 3x3 conv, deep stem, avg-down, no avd (timm's resnet50d,
    # resnext50d_32x4d).
    "resnet50d": _resnest(R50, radix=0, cardinality=1, width=64, avd=False),
    "resnext50d_32x4d": _resnest(R50, radix=0, cardinality=32, width=4, avd=False),
}

# Named points that timm defines under the same name (checked for exact equivalence in the tests).
TIMM_POINTS: tuple[str, ...] = (
    "resnest14d", "resnest26d", "resnest50d", "resnest101e", "resnest200e", "resnest269e",
    "resnest50d_1s4x24d", "resnest50d_4s2x40d", "resnet50d", "resnext50d_32x4d",
)

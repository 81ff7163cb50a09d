"""The `resnest` search space: per-stage radix, cardinality, width and depth plus global axes.

Define-by-run: `suggest(trial)` asks an Optuna trial one question per axis, and asks only questions
whose answers are valid given earlier ones (conditional axes), so every spec it returns is valid and
samplers never waste trials on rejected points. `sample(rng)` runs the same code with a seeded numpy
RNG standing in for the trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from search_spaces.errors import UserError
from search_spaces.spec import INPUT_REGIMES, STEMS, ArchSpec, StageSpec

# Attention widths are multiples of 8 (timm's rounding), so any divisor of 8 is a valid cardinality
# for radix >= 1; larger cardinalities are offered only to plain (radix 0) stages.
ATTENTION_SAFE_CARDINALITIES = (1, 2, 4, 8)

# Axes whose choices are numbers: kept ascending, so a study's choices read and sort as numbers.
NUMERIC_AXES = ("radix", "cardinality", "width", "stem_width", "base_planes", "attn_reduction",
                "attn_min_width", "dropout")


class TrialLike(Protocol):
    """The part of `optuna.Trial` the space uses; a numpy RNG adapter implements it too."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...


@dataclass(frozen=True)
class SpacePreset:
    """Bounds of the space: each axis is a tuple of allowed values, depths a (low, high) per
    stage."""

    name: str
    stage_depths: tuple[tuple[int, int], ...]
    radix: tuple[int, ...]
    cardinality: tuple[int, ...]
    width: tuple[int, ...]
    stem: tuple[str, ...]
    stem_width: tuple[int, ...]
    base_planes: tuple[int, ...]
    avg_down: tuple[bool, ...]
    avd: tuple[bool, ...]
    avd_first: tuple[bool, ...]
    attn_reduction: tuple[int, ...]
    attn_min_width: tuple[int, ...]
    dropout: tuple[float, ...]
    input_regime: str
    num_classes: int = 1000
    in_channels: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and not value:
                raise UserError(f"space preset {self.name!r}: axis {f.name} has no allowed values")
        for name in NUMERIC_AXES:  # in ascending order, so every view lists them numerically
            value = getattr(self, name)
            if list(value) != sorted(set(value)):
                raise UserError(f"space preset {self.name!r}: axis {name} must list distinct "
                                f"values in ascending order, got {value}")
        for i, (low, high) in enumerate(self.stage_depths):
            if not 1 <= low <= high:
                raise UserError(
                    f"space preset {self.name!r}: stage_depths[{i}]=({low}, {high}) "
                    "needs 1 <= low <= high"
                )
        if self.input_regime not in INPUT_REGIMES:
            raise UserError(
                f"space preset {self.name!r}: input_regime must be one of {INPUT_REGIMES}"
            )
        if bad := [s for s in self.stem if s not in STEMS]:
            raise UserError(f"space preset {self.name!r}: unknown stem {bad[0]!r}; valid: {STEMS}")
        if bad := [w for w in self.attn_min_width if w % 8]:
            raise UserError(
                f"space preset {self.name!r}: attn_min_width {bad[0]} must be a multiple of 8"
            )
        if bad := [r for r in self.radix if r < 0]:
            raise UserError(f"space preset {self.name!r}: radix {bad[0]} must be >= 0")
        if not any(r == 0 for r in self.radix) and not self.attention_cardinalities:
            raise UserError(
                f"space preset {self.name!r} admits no valid architecture: every radix uses "
                f"attention, which needs a cardinality in {ATTENTION_SAFE_CARDINALITIES}, "
                f"but cardinality allows only {self.cardinality}"
            )
        if min(self.base_planes) * min(self.width) < 64:
            raise UserError(
                f"space preset {self.name!r}: base_planes {min(self.base_planes)} x width "
                f"{min(self.width)} / 64 gives zero channels per group; raise either bound"
            )
        for planes in {b * 2**i for b in self.base_planes for i in range(len(self.stage_depths))}:
            if not self.radix_choices(planes):
                raise UserError(
                    f"space preset {self.name!r} admits no valid architecture: at {planes} planes "
                    f"no width in {self.width} splits evenly into any radix in {self.radix}"
                )

    @property
    def attention_cardinalities(self) -> tuple[int, ...]:
        return tuple(k for k in self.cardinality if k in ATTENTION_SAFE_CARDINALITIES)

    @property
    def usable_radix(self) -> tuple[int, ...]:
        """Radix values that have at least one valid cardinality."""
        return tuple(r for r in self.radix if r == 0 or self.attention_cardinalities)

    def width_choices(self, radix: int, planes: int) -> tuple[int, ...]:
        """Widths whose channels per group split evenly into `radix` parts at `planes`."""
        return tuple(w for w in self.width
                     if int(planes * w / 64) >= 1 and int(planes * w / 64) % max(radix, 1) == 0)

    def radix_choices(self, planes: int) -> tuple[int, ...]:
        """Radix values with at least one valid width at `planes`."""
        return tuple(r for r in self.usable_radix if self.width_choices(r, planes))

    def avd_first_choices_given_avd(self, avd: bool) -> tuple[bool, ...]:
        return self.avd_first if avd else (False,)


class ResNeStSpace:
    """A search space over ResNeSt-family networks with the bounds of one preset."""

    def __init__(self, preset: SpacePreset) -> None:
        self.preset = preset
        self.name = preset.name

    def __repr__(self) -> str:
        return f"ResNeStSpace({self.name!r})"

    @property
    def dimensions(self) -> dict[str, tuple[Any, ...]]:
        """Every axis and its allowed values (conditional axes are listed with all their values)."""
        p = self.preset
        dims: dict[str, tuple[Any, ...]] = {}
        for i, (low, high) in enumerate(p.stage_depths):
            dims[f"s{i + 1}_depth"] = tuple(range(low, high + 1))
            dims[f"s{i + 1}_radix"] = p.usable_radix
            dims[f"s{i + 1}_cardinality"] = p.cardinality
            dims[f"s{i + 1}_width"] = p.width
        for name in ("stem", "stem_width", "base_planes", "avg_down", "avd", "avd_first",
                     "attn_reduction", "attn_min_width", "dropout"):
            dims[name] = getattr(p, name)
        return dims

    def suggest(self, trial: TrialLike) -> ArchSpec:
        """Ask `trial` for one architecture; conditional axes get their own parameter names so
        Optuna's distributions stay static."""
        p = self.preset
        stem = trial.suggest_categorical("stem", p.stem)
        stem_width = trial.suggest_categorical("stem_width", p.stem_width)
        base_planes = trial.suggest_categorical("base_planes", p.base_planes)
        avg_down = trial.suggest_categorical("avg_down", p.avg_down)
        avd = trial.suggest_categorical("avd", p.avd)
        avd_first = (
            trial.suggest_categorical("avd_first", p.avd_first) if avd else False
        )
        uses_attention = any(r > 0 for r in p.usable_radix)
        attn_reduction = (
            trial.suggest_categorical("attn_reduction", p.attn_reduction)
            if uses_attention else p.attn_reduction[0]
        )
        attn_min_width = (
            trial.suggest_categorical("attn_min_width", p.attn_min_width)
            if uses_attention else p.attn_min_width[0]
        )
        dropout = trial.suggest_categorical("dropout", p.dropout)
        stages = []
        for i, (low, high) in enumerate(p.stage_depths):
            s = i + 1
            planes = base_planes * 2**i
            depth = trial.suggest_int(f"s{s}_depth", low, high) if low < high else low
            radixes = p.radix_choices(planes)
            radix = trial.suggest_categorical(
                _name(f"s{s}_radix", radixes != p.usable_radix, planes=planes), radixes)
            if radix == 0:
                # Plain stages allow more cardinalities than attention does: their own name.
                cardinality = trial.suggest_categorical(
                    _name(f"s{s}_cardinality", True, radix=0), p.cardinality)
            else:
                cardinality = trial.suggest_categorical(
                    f"s{s}_cardinality", p.attention_cardinalities
                )
            widths = p.width_choices(radix, planes)
            width = trial.suggest_categorical(
                _name(f"s{s}_width", widths != p.width, radix=radix, planes=planes), widths)
            stages.append(StageSpec(depth, radix, cardinality, width))
        return ArchSpec(
            stages=tuple(stages),
            stem=stem,
            stem_width=stem_width,
            base_planes=base_planes,
            avg_down=avg_down,
            avd=avd,
            avd_first=avd_first,
            attn_reduction=attn_reduction,
            attn_min_width=attn_min_width,
            dropout=dropout,
            num_classes=p.num_classes,
            in_channels=p.in_channels,
            input_regime=p.input_regime,
        )

    def sample(self, rng: Any) -> ArchSpec:
        """One uniformly chosen point per axis from a numpy `Generator` (no global RNG)."""
        return self.suggest(_RandomTrial(rng))

    def params_of(self, spec: ArchSpec) -> dict[str, Any]:
        """The Optuna parameters that make `suggest` return `spec` (for enqueueing known points).

        Raises UserError when the spec lies outside the space."""
        if problems := self.violations(spec):
            raise UserError(f"{spec.tag} is outside space {self.name}: {'; '.join(problems)}")
        answers: dict[str, Any] = {
            name: getattr(spec, name)
            for name in ("stem", "stem_width", "base_planes", "avg_down", "avd", "avd_first",
                         "attn_reduction", "attn_min_width", "dropout")
        }
        for i, stage in enumerate(spec.stages):
            s = i + 1
            answers.update({
                f"s{s}_depth": stage.depth, f"s{s}_radix": stage.radix,
                f"s{s}_cardinality": stage.cardinality, f"s{s}_width": stage.width,
            })
        recorder = AnswerTrial(answers)
        again = self.suggest(recorder)
        task = {"num_classes": spec.num_classes, "in_channels": spec.in_channels}
        if again.replace(**task) != spec:
            raise UserError(f"{spec.tag} cannot be expressed by space {self.name}'s parameters")
        return recorder.params

    def contains(self, spec: ArchSpec) -> bool:
        """Whether the architecture lies inside this space's bounds. `num_classes` and
        `in_channels` belong to the task, not the architecture, and are not checked."""
        return not self.violations(spec)

    def violations(self, spec: ArchSpec) -> list[str]:
        """Each bound the spec breaks, as 'field=value not in allowed' (empty when contained)."""
        p = self.preset
        out: list[str] = []

        def check(name: str, value: Any, allowed: Sequence[Any]) -> None:
            if value not in allowed:
                out.append(f"{name}={value!r} not in {tuple(allowed)}")

        if len(spec.stages) != len(p.stage_depths):
            return [f"stages has {len(spec.stages)} entries, space has {len(p.stage_depths)}"]
        for name in ("stem", "stem_width", "base_planes", "avg_down", "avd", "dropout"):
            check(name, getattr(spec, name), getattr(p, name))
        check("avd_first", spec.avd_first, p.avd_first_choices_given_avd(spec.avd))
        check("input_regime", spec.input_regime, (p.input_regime,))
        if any(s.radix > 0 for s in spec.stages):
            check("attn_reduction", spec.attn_reduction, p.attn_reduction)
            check("attn_min_width", spec.attn_min_width, p.attn_min_width)
        for i, (stage, (low, high)) in enumerate(zip(spec.stages, p.stage_depths, strict=True)):
            check(f"stages[{i}].depth", stage.depth, range(low, high + 1))
            check(f"stages[{i}].radix", stage.radix, p.usable_radix)
            allowed = p.cardinality if stage.radix == 0 else p.attention_cardinalities
            check(f"stages[{i}].cardinality", stage.cardinality, allowed)
            check(f"stages[{i}].width", stage.width, p.width)
        return out


def _name(base: str, narrowed: bool, **condition: int) -> str:
    """A parameter's name; when a condition narrowed its choices, the condition in brackets, e.g.
    `s1_width[radix=4,planes=16]`. Optuna needs one fixed set of choices per name, and the
    condition (not a list of values) is what a person reading a study wants to see."""
    if not narrowed:
        return base
    return f"{base}[{','.join(f'{k}={v}' for k, v in condition.items())}]"


def base_name(name: str) -> str:
    """The axis a parameter name answers: `s1_width[radix=4,planes=16]` -> `s1_width`."""
    return name.split("[", 1)[0]


class AnswerTrial:
    """Answers the space's questions from a dict (a point chosen by hand), recording which ones
    were asked: the parameters Optuna would need to reproduce that point."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.params: dict[str, Any] = {}

    def _answer(self, name: str) -> Any:
        value = self.answers[name] if name in self.answers else self.answers[base_name(name)]
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name)

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self._answer(name)


class _RandomTrial:
    """Answers the space's questions uniformly at random from a numpy Generator."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = choices[int(self.rng.integers(len(choices)))]
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int) -> int:
        value = int(self.rng.integers(low, high + 1))
        self.params[name] = value
        return value



SMALL = SpacePreset(
    name="small",
    # Four stages with strides 1-2-2-2 after a stride-1 stem: 16 px inputs end at 2 px.
    stage_depths=((1, 2), (1, 2), (1, 2), (1, 2)),
    radix=(0, 1, 2, 4),
    cardinality=(1, 2, 4),
    width=(8, 16, 24, 32, 48, 64),
    stem=("deep", "plain"),
    stem_width=(8, 16),
    base_planes=(16, 32),
    avg_down=(True, False),
    avd=(True, False),
    avd_first=(False, True),
    attn_reduction=(2, 4),
    attn_min_width=(8, 16, 32),
    dropout=(0.0, 0.1, 0.2),
    input_regime="small",
    num_classes=10,
    in_channels=1,
)

IMAGENET = SpacePreset(
    name="imagenet",
    # Bounds contain every named point (ResNet-50-D up to ResNeSt-269).
    stage_depths=((1, 3), (1, 30), (1, 48), (1, 8)),
    radix=(0, 1, 2, 3, 4),
    cardinality=(1, 2, 4, 8, 16, 32),
    width=(4, 8, 16, 24, 32, 40, 48, 64, 80, 96, 128),
    stem=("deep", "plain"),
    stem_width=(32, 64),
    base_planes=(64,),
    avg_down=(True, False),
    avd=(True, False),
    avd_first=(False, True),
    attn_reduction=(2, 4, 8),
    attn_min_width=(16, 32, 64),
    dropout=(0.0, 0.1, 0.2, 0.3, 0.5),
    input_regime="imagenet",
)

PRESETS: dict[str, SpacePreset] = {"small": SMALL, "imagenet": IMAGENET}

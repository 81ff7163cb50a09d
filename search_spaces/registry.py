"""One registry for search spaces and named points, so every CLI resolves names the same way."""

from __future__ import annotations

import json
from pathlib import Path

from search_spaces.errors import SpecError, UserError
from search_spaces.named_points import NAMED_POINTS
from search_spaces.resnest_space import PRESETS, ResNeStSpace
from search_spaces.spec import ArchSpec

# Space name -> preset name. "resnest" alone is the CPU-sized space used by the quick start.
SPACES: dict[str, str] = {
    "resnest": "small",
    "resnest-small": "small",
    "resnest-imagenet": "imagenet",
}
SpecLike = ArchSpec | str | Path


def list_spaces() -> list[str]:
    return list(SPACES)


def list_distinct_spaces() -> list[str]:
    """One name per distinct space (the first of its aliases): what a test or table iterates."""
    return list({preset: name for name, preset in reversed(SPACES.items())}.values())[::-1]


def list_presets() -> list[str]:
    return list(PRESETS)


def get_space(name: str, preset: str | None = None) -> ResNeStSpace:
    """The space called `name`; `preset` (small, imagenet) overrides the name's default bounds."""
    if name not in SPACES:
        raise UserError(f"unknown space {name!r}; valid spaces: {', '.join(SPACES)}")
    preset_name = preset or SPACES[name]
    if preset_name not in PRESETS:
        raise UserError(f"unknown preset {preset_name!r}; valid presets: {', '.join(PRESETS)}")
    return ResNeStSpace(PRESETS[preset_name])


def list_named_points() -> list[str]:
    return list(NAMED_POINTS)


def named_point(name: str) -> ArchSpec:
    if name not in NAMED_POINTS:
        raise UserError(
            f"unknown named point {name!r}; valid names: {', '.join(NAMED_POINTS)}"
        )
    return NAMED_POINTS[name]


def resolve_spec(spec: SpecLike) -> ArchSpec:
    """Accept a spec, a named point, a path to a spec JSON file, or JSON text."""
    if isinstance(spec, ArchSpec):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith(".json")):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"spec file {path} does not exist")
        try:
            text = path.read_text()
        except OSError as err:
            raise UserError(f"cannot read spec file {path}: {err.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{path}: not valid JSON: {err}") from None
        # Export metadata and trial records wrap the spec under "spec".
        if isinstance(data, dict) and "spec" in data and "stages" not in data:
            data = data["spec"]
        try:
            return ArchSpec.from_dict(data)
        except SpecError as err:
            raise SpecError(f"{path}: {err}") from None
    if isinstance(spec, str):
        if spec.lstrip().startswith("{"):
            return ArchSpec.from_json(spec)
        return named_point(spec)
    raise SpecError(f"expected a spec, named point or JSON path, got {type(spec).__name__}")

"""Architecture specs, named points and search spaces (torch-free)."""

from search_spaces.errors import SpecError, UserError
from search_spaces.registry import (
    get_space,
    list_distinct_spaces,
    list_named_points,
    list_presets,
    list_spaces,
    named_point,
    resolve_spec,
)
from search_spaces.resnest_space import ResNeStSpace, SpacePreset
from search_spaces.spec import ArchSpec, StageSpec

__all__ = [
    "ArchSpec", "StageSpec", "ResNeStSpace", "SpacePreset", "SpecError", "UserError",
    "get_space", "list_distinct_spaces", "list_named_points", "list_presets", "list_spaces",
    "named_point", "resolve_spec",
]

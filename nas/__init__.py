"""The builder and cost model at the package's top (`nas.build_model`, `nas.measure_costs`).

They resolve lazily (PEP 562): `nas.experiment` and `analysis`, which never touch torch, import
`nas.*` modules without paying for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.models.builder import build_model
    from nas.models.costs import CostRecord, measure_costs, static_costs

_EXPORTS = {
    "build_model": "nas.models.builder",
    "CostRecord": "nas.models.costs",
    "measure_costs": "nas.models.costs",
    "static_costs": "nas.models.costs",
}
__all__ = ["CostRecord", "build_model", "measure_costs", "static_costs"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")

"""Model builder and cost model for ResNeSt-family architecture specs.

Exports resolve lazily (PEP 562), so `import nas` or `import nas.search` does not pay for
importing torch until a builder or cost function is used; nothing in nas/ imports timm.
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

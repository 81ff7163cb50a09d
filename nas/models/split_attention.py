"""Import path of `SplitAttention` kept for existing scripts; it lives in `nas.models.network`."""

from __future__ import annotations

from nas.models.network import SplitAttention

__all__ = ["SplitAttention"]

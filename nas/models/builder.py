"""Build a ResNeSt-family network from an `ArchSpec`.

`build_model` is a pure function of the spec: the same spec and torch seed give the same weights.
The network itself lives in the torch-only `nas.models.network` (the file every export embeds);
this module only turns a spec into that network's plain arguments.
"""

from __future__ import annotations

from nas.models.network import ResNeSt, init_weights
from search_spaces.block_plan import block_plan
from search_spaces.registry import SpecLike, resolve_spec


def build_model(spec_or_name: SpecLike, num_classes: int | None = None) -> ResNeSt:
    """The network for a spec, a named point or a spec JSON path; `num_classes` overrides the spec.

    The returned model's `spec` attribute is the resolved spec (introspection only; the forward
    never reads it)."""
    spec = resolve_spec(spec_or_name)
    plan = tuple(tuple(stage) for stage in block_plan(spec))
    model = ResNeSt(spec.stem, spec.stem_width, spec.in_channels, spec.input_regime, plan,
                    spec.dropout, spec.num_classes if num_classes is None else num_classes)
    init_weights(model)
    model.spec = spec
    return model

"""Build a ResNeSt-family network from an `ArchSpec`.

`build_model` is a pure function of the spec: the same spec and torch seed give the same weights.
The network itself lives in the torch-only `nas.models.network` (the file every export embeds);
this module only turns a spec into that network's plain arguments, and the network's ValueErrors
about user choices (feature indices, weights that do not fit) into `UserError`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nas.models.network import ResNeSt, ResNeStFeatures, init_weights, load_pretrained
from search_spaces.block_plan import block_plan
from search_spaces.errors import UserError
from search_spaces.registry import SpecLike, resolve_spec


def build_model(spec_or_name: SpecLike, num_classes: int | None = None, *,
                features_only: bool = False,
                out_indices: Sequence[int] | None = None) -> ResNeSt:
    """The network for a spec, a named point or a spec JSON path; `num_classes` overrides the spec.

    `features_only=True` builds timm's features-only backbone (`ResNeStFeatures`: a list of feature
    maps at `out_indices`, 0 = stem, i = stage i; default all, `feature_info` describing them).
    The returned model's `spec` attribute is the resolved spec (introspection only; the forward
    never reads it)."""
    spec = resolve_spec(spec_or_name)
    plan = tuple(tuple(stage) for stage in block_plan(spec))
    if features_only:
        if num_classes is not None:
            raise UserError("features_only builds no classifier: num_classes does not apply")
        try:
            model: ResNeSt = ResNeStFeatures(spec.stem, spec.stem_width, spec.in_channels,
                                             spec.input_regime, plan,
                                             None if out_indices is None else tuple(out_indices))
        except ValueError as err:
            raise UserError(str(err)) from None
    else:
        if out_indices is not None:
            raise UserError("out_indices choose feature maps: pass features_only=True")
        model = ResNeSt(spec.stem, spec.stem_width, spec.in_channels, spec.input_regime, plan,
                        spec.dropout, spec.num_classes if num_classes is None else num_classes)
    init_weights(model)
    model.spec = spec
    return model


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """`nas.models.network.load_pretrained` (strict but for a classifier of another class count)
    with its misfit as a UserError; returns the tensor names kept as initialised."""
    spec = getattr(model, "spec", None)
    try:
        return load_pretrained(model, dict(state))
    except ValueError as err:
        where = f"architecture {spec.tag}" if spec is not None else "the network"
        raise UserError(f"the weights do not fit {where}: {err}") from None

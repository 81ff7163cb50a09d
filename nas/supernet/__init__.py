"""One-shot search's supernet (issue 20, in progress): the elastic split-attention supernet over
radix, cardinality, width and depth (`supernet`, `layout`, `branch`), which architectures it covers
(`config`), channel importance ordering (`importance`) and training primitives (`training`).
Not yet here: search integration, Ray Train training, ranking evidence."""

from nas.supernet.config import SupernetConfig
from nas.supernet.importance import reorder_by_importance
from nas.supernet.supernet import Supernet
from nas.supernet.training import SandwichResult, recalibrate_bn, sandwich_step

__all__ = ["SandwichResult", "Supernet", "SupernetConfig", "recalibrate_bn",
           "reorder_by_importance", "sandwich_step"]

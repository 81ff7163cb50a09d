"""One-shot search's supernet (issue 20, in progress): the elastic split-attention supernet over
radix, cardinality, width and depth (`supernet`, `layout`, `branch`), which architectures it covers
(`config`), channel importance ordering (`importance`), training primitives (`training`),
progressive shrinking's schedules (`shrink`: an option of the training, off by default), the
epoch loop with its checkpoint directory (`trainer`) and `python -m nas.supernet.train` (`train`:
in-process or on Ray Train workers through `trials.ray_runner`). Not yet here: any evidence that
inherited accuracy ranks architectures as training does."""

from nas.supernet.config import SupernetConfig
from nas.supernet.importance import reorder_by_importance
from nas.supernet.supernet import Supernet
from nas.supernet.training import SandwichResult, recalibrate_bn, sandwich_step

__all__ = ["SandwichResult", "Supernet", "SupernetConfig", "recalibrate_bn",
           "reorder_by_importance", "sandwich_step"]

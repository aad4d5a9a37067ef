"""The passes, by CLI name. This dict is the only registry."""

from __future__ import annotations

from graphcomp.core.pass_base import Pass
from graphcomp.passes.cleanup import CleanupPass
from graphcomp.passes.dfq.absorb_bias import AbsorbBiasPass
from graphcomp.passes.dfq.bias_correct import BiasCorrectPass
from graphcomp.passes.dfq.dfq import DfqPass
from graphcomp.passes.dfq.equalize import EqualizePass
from graphcomp.passes.fold_bn import FoldBnPass
from graphcomp.passes.prune.prune import PrunePass
from graphcomp.passes.qdq.qdq import QdqPass
from graphcomp.passes.svd.svd import SvdPass

REGISTRY: dict[str, type[Pass]] = {
    "absorb-bias": AbsorbBiasPass,
    "bias-correct": BiasCorrectPass,
    "cleanup": CleanupPass,
    "dfq": DfqPass,
    "equalize": EqualizePass,
    "fold-bn": FoldBnPass,
    "prune": PrunePass,
    "qdq": QdqPass,
    "svd": SvdPass,
}

"""The passes, by CLI name. This dict is the only registry."""
from __future__ import annotations

from graphcomp.pass_base import Pass
from passes.absorb_bias import AbsorbBiasPass
from passes.bias_correct import BiasCorrectPass
from passes.cleanup import CleanupPass
from passes.dfq import DfqPass
from passes.equalize import EqualizePass
from passes.fold_bn import FoldBnPass
from passes.prune import PrunePass
from passes.qdq import QdqPass
from passes.svd import SvdPass

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

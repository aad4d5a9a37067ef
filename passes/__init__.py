"""The passes, by CLI name. This dict is the only registry."""
from __future__ import annotations

from graphcomp.pass_base import Pass
from passes.cleanup import CleanupPass
from passes.equalize import EqualizePass
from passes.fold_bn import FoldBnPass
from passes.svd import SvdPass

REGISTRY: dict[str, type[Pass]] = {
    "cleanup": CleanupPass,
    "equalize": EqualizePass,
    "fold-bn": FoldBnPass,
    "svd": SvdPass,
}

"""prune: structured channel removal with consumer-shape propagation (DESIGN.md 3)."""

from __future__ import annotations

from graphcomp.passes.prune.prune import PruneConfig, PrunePass

__all__ = ["PruneConfig", "PrunePass"]

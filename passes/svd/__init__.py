"""svd: low-rank splitting of Gemm/MatMul/Conv under a whole-model budget (DESIGN.md 4)."""

from __future__ import annotations

from graphcomp.passes.svd.config import SvdConfig
from graphcomp.passes.svd.svd import SvdPass

__all__ = ["SvdConfig", "SvdPass"]

"""qdq: QuantizeLinear/DequantizeLinear insertion with a per-tensor config (DESIGN.md 6)."""

from __future__ import annotations

from graphcomp.passes.qdq.config import QdqConfig
from graphcomp.passes.qdq.qdq import QdqPass

__all__ = ["QdqConfig", "QdqPass"]

"""graphcomp: data-free compression of ONNX models (prune, svd, dfq, qdq), verified."""

from __future__ import annotations

from graphcomp.api import compress
from graphcomp.core.errors import (
    ConfigError,
    GraphcompError,
    ModelLoadError,
    PassFailedError,
    UnsupportedModelError,
    VerificationError,
)
from graphcomp.core.version import __version__

__all__ = [
    "ConfigError",
    "GraphcompError",
    "ModelLoadError",
    "PassFailedError",
    "UnsupportedModelError",
    "VerificationError",
    "__version__",
    "compress",
]

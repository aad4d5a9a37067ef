"""graphcomp: data-free compression of ONNX models (prune, svd, dfq, qdq), verified."""
from __future__ import annotations

__version__ = "0.1.0"

from graphcomp.api import compress  # noqa: E402
from graphcomp.errors import (  # noqa: E402
    ConfigError,
    GraphcompError,
    ModelLoadError,
    PassFailedError,
    UnsupportedModelError,
    VerificationError,
)

__all__ = ["ConfigError", "GraphcompError", "ModelLoadError", "PassFailedError",
           "UnsupportedModelError", "VerificationError", "__version__", "compress"]

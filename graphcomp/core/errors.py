"""Errors a user can act on.

The CLI prints the message of a `GraphcompError` on one line and exits 2 (1 for a
failed verification). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class GraphcompError(Exception):
    """Base class of every error caused by the user's input or settings."""

    exit_code = 2


class ConfigError(GraphcompError):
    """A bad pass spec, option value or config file."""


class ModelLoadError(GraphcompError):
    """The model file is missing, unreadable, not ONNX or unsafe."""


class UnsupportedModelError(GraphcompError):
    """A valid model that a pass or graphcomp as a whole cannot handle."""


class VerificationError(GraphcompError):
    """The compressed model missed a fidelity threshold."""

    exit_code = 1


class PassFailedError(GraphcompError):
    """A pass produced an invalid graph; names the pass and those already run.

    This is a bug in graphcomp, not a user error, but it carries the pass history,
    so the CLI shows the chained traceback as well as the message.
    """

    exit_code = 3

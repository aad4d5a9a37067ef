"""Progress of long work inside a step, for whoever listens (the CLI), unknown to the worker.

Code anywhere below the CLI calls `tick(what, done, total)` as it goes (samples measured,
probes run); the CLI installs a listener for the duration of a run with `listening(fn)`.
Without a listener a tick costs one context-variable lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str, int, int], None]
_listener: ContextVar[Listener | None] = ContextVar("graphcomp_progress", default=None)


def tick(what: str, done: int, total: int) -> None:
    """Report that `done` of `total` units of `what` are finished."""
    listener = _listener.get()
    if listener is not None:
        listener(what, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every `tick` in this context to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)

"""What a user sees while graphcomp works: a live line on a terminal, a line per step off it.

On a terminal one status line (on the status console, stderr in the CLI) shows the
running step with its place in the run (`dfq/equalize (4/8)`), the sub-step count of
long work inside it (`samples 32/64`, from `graphcomp.core.progress.tick`), the elapsed
time and an estimate of the rest of that sub-step. Off a terminal (a log, CI) each
finished step prints one line with its time on the lines console (stdout in the CLI, so
stderr carries nothing but the one-line error of a failed run); `lines=None` drops them
(`--json`). `quiet` prints nothing. Elapsed times are wall-clock, `time.monotonic`.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.status import Status

from graphcomp.core import progress


class ProgressView:
    """A progress callback for `graphcomp.compress` and a listener for `progress.tick`."""

    def __init__(
        self, console: Console, quiet: bool = False, lines: Console | None | bool = True
    ) -> None:
        self.console = console
        self.lines = console if lines is True else (lines or None)
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.status: Status | None = None
        self.step: str | None = None
        self.step_start = self.sub_start = time.monotonic()
        self.detail = ""

    def __enter__(self) -> ProgressView:
        if self.live:
            self.status = self.console.status("loading")
            self.status.start()
        self._context = progress.listening(self.tick)
        self._context.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._context.__exit__(kind, error, trace)
        if kind is None:
            self._finish()
        if self.status is not None:
            self.status.stop()

    def __call__(self, step: str) -> None:
        """A new step starts (the previous one is finished)."""
        self._finish()
        self.step, self.detail = step, ""
        self.step_start = self.sub_start = time.monotonic()
        self._show()

    def tick(self, what: str, done: int, total: int) -> None:
        """`done` of `total` units of `what` are finished inside the running step."""
        now = time.monotonic()
        if done <= 0 or not self.detail.startswith(what):
            self.sub_start = now if done <= 0 else self.sub_start
        rest = (now - self.sub_start) / done * (total - done) if 0 < done < total else 0.0
        self.detail = f"{what} {done}/{total}" + (f", ~{rest:.0f}s left" if rest >= 1 else "")
        self._show()

    def line(self) -> str:
        """The status line as it reads now."""
        elapsed = time.monotonic() - self.step_start
        parts = [f"running {self.step or 'loading'}", self.detail, f"{elapsed:.0f}s"]
        return " · ".join(p for p in parts if p)

    def _show(self) -> None:
        if self.status is not None:
            self.status.update(self.line())

    def _finish(self) -> None:
        if self.step is None:
            return
        seconds = time.monotonic() - self.step_start
        if not self.live and not self.quiet and self.lines is not None:
            self.lines.print(f"{self.step}: {seconds:.2f} s", highlight=False, soft_wrap=True)
        self.step = None

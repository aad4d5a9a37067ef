"""Progress a user can follow: a live line on a terminal, a line per step off it, --quiet."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

import graphcomp
from graphcomp.cli import app
from graphcomp.live import ProgressView

MODEL = Path(__file__).resolve().parents[2] / "models" / "mobilenetv2_s_bn.onnx"


def _console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120)


def test_off_a_terminal_each_step_prints_one_line_with_its_time():
    console = _console(terminal=False)
    with ProgressView(console) as view:
        graphcomp.compress(MODEL, "dfq(equalize=true,correct=true)", progress=view)
    lines = console.file.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("dfq/")]
    assert len(steps) == 8
    assert all(re.fullmatch(r"dfq/[\w-]+ \(\d/8\): \d+\.\d\d s", line) for line in steps)
    assert lines[-1].startswith("verify: ")


def test_on_a_terminal_one_live_line_shows_step_counts_and_time():
    console = _console(terminal=True)
    shown: list[str] = []
    with ProgressView(console) as view:
        view._show = lambda: shown.append(view.line())  # type: ignore[method-assign]
        graphcomp.compress(MODEL, "dfq(equalize=true,correct=true)", progress=view)
    assert any(re.match(r"running dfq/stats \(3/8\) · samples \d+/64 · \d+s", s) for s in shown)
    assert not any(line.startswith("dfq/") for line in console.file.getvalue().splitlines())


def test_quiet_prints_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["run", str(MODEL), "-p", "cleanup", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "(1/1)" not in result.stdout
    loud = CliRunner().invoke(app, ["run", str(MODEL), "-p", "cleanup", "-o", str(out)])
    assert re.search(r"^cleanup \(1/1\): \d+\.\d\d s$", loud.stdout, re.M)
    assert loud.stderr == ""  # stderr is for the one-line error of a failed run only

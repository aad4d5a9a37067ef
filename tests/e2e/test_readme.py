"""The README opens with the two commands CI runs; the first one works as written."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The lines of the README's first ```bash block, as .ci/run reads them."""
    script = "awk '/^```bash$/{n++; next} /^```$/{if (n == 1) exit} n == 1' README.md"
    out = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_readme_opens_with_install_run_and_install_test_commands():
    first, second = readme_commands()
    assert "pip install . &&" in first and "graphcomp run models/" in first
    assert 'pip install ".[test]"' in second and second.endswith("python -m pytest -q")
    assert "awk '/^```bash$/" in (ROOT / ".ci" / "run").read_text()


def test_first_readme_command_compresses_the_bundled_model(tmp_path):
    first = readme_commands()[0]
    run = first[first.index("graphcomp run") :]
    args = shlex.split(run)[1:]
    model = ROOT / args[1]
    if not model.exists():
        pytest.fail(f"README's model {args[1]} is missing from the repository")
    (tmp_path / "models").symlink_to(ROOT / "models")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "graphcomp", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / args[args.index("-o") + 1]
    onnx.checker.check_model(str(out))
    report = json.loads((tmp_path / args[args.index("--report") + 1]).read_text())
    assert report["verification"]["passed"] is True

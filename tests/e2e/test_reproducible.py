"""The same model and spec give byte-identical output files (names come from the graph)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import graphcomp

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    ("resnet_s_bn", "fold-bn,equalize"),
    ("mobilenetv2_s_bn", "fold-bn,equalize"),
    ("resnet_s_bn", "dfq"),
    ("mobilenetv2_s_bn", "dfq"),
]


@pytest.mark.parametrize(("model", "spec"), CASES)
def test_two_runs_in_one_process_write_identical_bytes(model, spec, tmp_path):
    path = ROOT / "models" / f"{model}.onnx"
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    graphcomp.compress(path, spec, output=first)
    graphcomp.compress(path, spec, output=second)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize(("model", "spec"), [CASES[0], CASES[3]])
def test_two_processes_write_identical_bytes(model, spec, tmp_path):
    path = ROOT / "models" / f"{model}.onnx"
    outputs = []
    for hash_seed in ("1", "2"):  # set and dict-of-set orders differ between the two
        out = tmp_path / f"out_{hash_seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "graphcomp", "run", str(path), "--passes", spec]
        done = subprocess.run(
            [*cmd, "-o", str(out)], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]

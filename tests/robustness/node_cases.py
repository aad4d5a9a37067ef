"""The onnx wheel's backend node cases, run through graphcomp (shared by the test and script).

Each case is generated in memory (onnx.backend.test.case.node.collect_testcases), saved to
a temporary folder with its first data set as the verification inputs, checked in
onnxruntime against the expected outputs, then compressed with each pass list through the
CLI's code path (graphcomp.compress, verification on). Outcomes: "ok" (a valid model),
"refused" (a GraphcompError: the CLI's exit 2 with one line; "refused-multiline" when the
message has several lines), "failed" (verification missed a threshold: exit 1, for a
lossless pass list a wrong output), "crash" (anything else: exit 3), "invalid" (the
written model does not pass onnx.checker).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import graphcomp
from graphcomp.core.errors import GraphcompError, PassFailedError

DEFAULT_PASS_LISTS = [
    "cleanup",
    "fold-bn",
    "equalize",
    "prune",
    "svd",
    "qdq",
    "dfq",
    "dfq,prune,svd,qdq",
    "prune,svd,dfq",
]
MATCH_RTOL, MATCH_ATOL = 1e-3, 1e-4


def cases() -> list[Any]:
    """The backend node cases with a model and at least one data set."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases(None) if c.model is not None and c.data_sets]


def ort_matches(model: onnx.ModelProto, inputs: list[Any], outputs: list[Any]) -> bool:
    """True when onnxruntime loads the case, runs it on its inputs and matches its outputs."""
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in sess.get_inputs()]
        if len(names) != len(inputs) or any(not isinstance(x, np.ndarray) for x in inputs):
            return False
        got = sess.run(None, dict(zip(names, inputs, strict=True)))
    except Exception:  # noqa: BLE001 - any failure means "onnxruntime does not run it"
        return False
    if len(got) != len(outputs):
        return False
    for g, want in zip(got, outputs, strict=True):
        if not isinstance(want, np.ndarray) or not isinstance(g, np.ndarray):
            return False
        if g.shape != want.shape:
            return False
        if want.dtype.kind in "fc":
            if not np.allclose(g, want, rtol=MATCH_RTOL, atol=MATCH_ATOL, equal_nan=True):
                return False
        elif not np.array_equal(g, want):
            return False
    return True


def _storable(array: np.ndarray) -> np.ndarray:
    """Strings as unicode arrays: an .npz holds them without pickling."""
    return array.astype(str) if array.dtype == object else array


def run_case(case: Any, pass_lists: list[str], folder: Path) -> dict[str, tuple[str, str]]:
    """Outcome and message of each pass list on one case."""
    inputs, _ = case.data_sets[0]
    path = folder / "model.onnx"
    onnx.save(case.model, path)
    names = [
        i.name
        for i in case.model.graph.input
        if i.name not in {t.name for t in case.model.graph.initializer}
    ]
    feeds = folder / "inputs.npz"
    np.savez(feeds, **{n: _storable(x) for n, x in zip(names, inputs, strict=True)})
    out: dict[str, tuple[str, str]] = {}
    for spec in pass_lists:
        target = folder / "out.onnx"
        target.unlink(missing_ok=True)
        try:
            graphcomp.compress(path, spec, output=target, inputs=feeds)
        except graphcomp.VerificationError as e:
            out[spec] = ("failed", str(e).splitlines()[0][:300])
            continue
        except PassFailedError as e:
            out[spec] = ("crash", str(e).splitlines()[0][:300])
            continue
        except GraphcompError as e:
            message = str(e)
            kind = "refused" if "\n" not in message.strip() else "refused-multiline"
            out[spec] = (kind, message.splitlines()[0][:300])
            continue
        except Exception as e:  # noqa: BLE001 - a crash is what this script counts
            out[spec] = ("crash", repr(e)[:300])
            continue
        try:
            onnx.checker.check_model(str(target))
            out[spec] = ("ok", "")
        except Exception as e:  # noqa: BLE001
            out[spec] = ("invalid", str(e).splitlines()[0][:300])
    return out


def runnable_cases(only: str | None = None) -> tuple[list[Any], int]:
    """The cases onnxruntime runs and matches (name containing `only`), and how many not."""
    kept, skipped = [], 0
    for case in cases():
        if only and only not in case.name:
            continue
        inputs, outputs = case.data_sets[0]
        if ort_matches(case.model, list(inputs), list(outputs)):
            kept.append(case)
        else:
            skipped += 1
    return kept, skipped

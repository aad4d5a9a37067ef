"""Compare the original and the compressed model in onnxruntime (DESIGN.md section 7).

Both models run on the same inputs and every output is compared.
Inputs are seeded N(0, 1) floats (integers in [0, 2), random bools) unless the user
gives an `.npz`; dynamic dims take `input_shapes` overrides, else `batch` for the first
dim and `DEFAULT_DYNAMIC_DIM` for the others. Relative error is
max|a - b| / max(max|a|, REL_FLOOR). NaN in both models at the same place, and the
same infinity, count as equal; any other non-finite mismatch is an infinite error.
String outputs compare exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx

from graphcomp.core.errors import (
    ConfigError,
    GraphcompError,
    PassFailedError,
    UnsupportedModelError,
)
from graphcomp.measure.inputs import (
    ORT_ERRORS,
    ORT_OPT_LEVEL,
    SHAPE_HINT,
    describe,
    load_inputs,
    make_inputs,
    session,
)

LOSSLESS_RTOL = 1e-4
T = TypeVar("T")
TINY = 1e-12  # guards divisions by an all-zero reference
# Relative error is taken against max|ref|, but never against less than this: outputs
# that are all tiny (saturated sigmoids on random inputs) would turn float rounding
# (~1e-8 absolute) into large "relative" errors.
REL_FLOOR = 1e-2


@dataclass(frozen=True)
class Thresholds:
    """Verdict limits; None means not checked."""

    max_rel_err: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None


@dataclass
class OutputStats:
    """Fidelity of one output."""

    name: str
    shape: list[int]
    max_abs_err: float
    mean_abs_err: float
    rel_err: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None


@dataclass
class VerifyResult:
    """Per-output stats, the verdict and how it was reached."""

    outputs: list[OutputStats]
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)
    input_source: str = "seeded N(0,1)"
    ort_optimization: str = str(ORT_OPT_LEVEL)

    @property
    def checked(self) -> bool:
        """True when at least one threshold applied to at least one output."""
        t = self.thresholds
        top1 = t.min_top1 is not None and any(o.top1_agreement is not None for o in self.outputs)
        return (
            bool(self.failures)
            or top1
            or (bool(self.outputs) and (t.max_rel_err is not None or t.min_cosine is not None))
        )

    @property
    def failed(self) -> bool:
        """True when a threshold was missed (or an output is missing)."""
        return bool(self.failures)

    @property
    def verdict(self) -> str:
        """One of passed (a threshold was checked and held), failed, unchecked."""
        if self.failed:
            return "failed"
        return "passed" if self.checked else "unchecked"

    @property
    def passed(self) -> bool:
        """True only when a threshold was checked and held."""
        return self.verdict == "passed"

    @property
    def synthetic(self) -> bool:
        """True when the inputs were generated, not given: the numbers estimate only."""
        return not self.input_source.startswith("file ")

    @property
    def needed_rtol(self) -> float:
        """The relative tolerance that would have been needed to pass."""
        return max((o.rel_err for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "failures": self.failures,
            "needed_rtol": self.needed_rtol,
            "input_source": self.input_source,
            "ort_optimization": self.ort_optimization,
            "thresholds": asdict(self.thresholds),
            "outputs": [asdict(o) for o in self.outputs],
        }


def compare_arrays(name: str, ref: np.ndarray, new: np.ndarray) -> OutputStats:
    """Fidelity statistics of `new` against `ref` (all infinite if shapes differ)."""
    if np.shape(ref) != np.shape(new):
        return OutputStats(
            name,
            list(np.shape(ref)),
            math.inf,
            math.inf,
            math.inf,
            0.0,
            -math.inf,
            0.0 if np.ndim(ref) == 2 else None,
        )
    if not _numeric(ref) or not _numeric(new):  # strings: equal or not
        same = bool(np.array_equal(np.asarray(ref), np.asarray(new)))
        err0 = 0.0 if same else math.inf
        return OutputStats(name, list(np.shape(ref)), err0, err0, err0, float(same), -err0, None)
    a = np.asarray(ref, dtype=np.float64).reshape(-1)
    b = np.asarray(new, dtype=np.float64).reshape(-1)
    # NaN where both are NaN and the same infinity in both count as equal; only
    # the finite positions enter the statistics, any other mismatch is an inf error
    same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    bad = ~same & ~(np.isfinite(a) & np.isfinite(b))
    a, b = np.where(same | bad, 0.0, a), np.where(same | bad, 0.0, b)
    err = np.where(bad, math.inf, np.abs(a - b))
    max_ref = float(np.max(np.abs(a))) if a.size else 0.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norm) if norm > TINY else float(np.array_equal(a, b))
    noise = float(np.sum((a - b) ** 2))
    if bool(bad.any()):
        sqnr = -math.inf
    elif noise == 0:
        sqnr = math.inf
    elif float(np.sum(a**2)) == 0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(float(np.sum(a**2)) / noise)
    return OutputStats(
        name,
        list(np.shape(ref)),
        float(err.max(initial=0.0)),
        float(err.mean()) if err.size else 0.0,
        float(err.max(initial=0.0) / max(max_ref, REL_FLOOR)),
        cosine,
        sqnr,
        _top1(ref, new),
    )


def _numeric(array: np.ndarray) -> bool:
    return np.asarray(array).dtype.kind in "biufc"


def _top1(ref: np.ndarray, new: np.ndarray) -> float | None:
    """Share of rows with the same argmax, for [N, C] float class scores."""
    if (
        ref.ndim != 2
        or ref.shape[0] == 0
        or ref.shape[1] < 2
        or not np.issubdtype(ref.dtype, np.floating)
    ):
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(new, axis=1)))


def verdict(stats: list[OutputStats], thresholds: Thresholds) -> list[str]:
    """The thresholds each output missed, as sentences."""
    failures = []
    for s in stats:
        t = thresholds
        if t.max_rel_err is not None and not s.rel_err <= t.max_rel_err:
            failures.append(f"{s.name}: relative error {s.rel_err:.3g} > {t.max_rel_err:g}")
        if t.min_cosine is not None and not s.cosine >= t.min_cosine:
            failures.append(f"{s.name}: cosine {s.cosine:.5f} < {t.min_cosine:g}")
        if (
            t.min_top1 is not None
            and s.top1_agreement is not None
            and not (s.top1_agreement >= t.min_top1)
        ):
            failures.append(f"{s.name}: top-1 agreement {s.top1_agreement:.3f} < {t.min_top1:g}")
    return failures


def _guarded(call: Callable[[], T], error: type[GraphcompError], message: str) -> T:
    """Run an onnxruntime call; turn its failure into `error` with `message`."""
    try:
        return call()
    except ORT_ERRORS as e:
        raise error(f"{message} ({_first_line(e)})") from e


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def verify(
    original: onnx.ModelProto | str | Path,
    compressed: onnx.ModelProto | str | Path,
    thresholds: Thresholds | None = None,
    inputs: str | Path | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    batch: int = 8,
) -> VerifyResult:
    """Compare the two models output by output on the same inputs.

    One session at a time: the original runs, its outputs are kept and its session
    dropped before the compressed model is loaded, so a big model's weights are never
    held twice.
    """
    thresholds = thresholds or Thresholds()
    ref_sess = _guarded(
        lambda: session(original),
        UnsupportedModelError,
        "onnxruntime cannot load the original model",
    )
    if inputs is not None:
        feeds, source = load_inputs(inputs, ref_sess), f"file {inputs}"
    else:
        feeds = make_inputs(ref_sess, input_shapes, seed, batch)
        source = f"seeded N(0,1), seed {seed}"
    names = [o.name for o in ref_sess.get_outputs()]
    shapes = describe(feeds)
    ref_out = _guarded(
        functools.partial(ref_sess.run, names, feeds),
        ConfigError,
        f"onnxruntime cannot run the original model on {shapes}; {SHAPE_HINT}",
    )
    del ref_sess  # its weights go before the compressed model's load
    new_sess = _guarded(
        lambda: session(compressed),
        PassFailedError,
        "onnxruntime cannot load the compressed model (a graphcomp bug)",
    )
    new_names = {o.name for o in new_sess.get_outputs()}
    missing = [n for n in names if n not in new_names]
    if missing:
        return VerifyResult([], thresholds, [f"outputs missing from the result: {missing}"], source)
    new_out = _guarded(
        lambda: new_sess.run(names, feeds),
        PassFailedError,
        f"the compressed model fails in onnxruntime on {shapes} where the "
        "original runs (a graphcomp bug)",
    )
    stats = [compare_arrays(n, r, x) for n, r, x in zip(names, ref_out, new_out, strict=True)]
    return VerifyResult(stats, thresholds, verdict(stats, thresholds), source)

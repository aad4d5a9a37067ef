"""The pass contract (DESIGN.md section 2).

A pass declares `name`, `matches` (op types it edits), `creates` (op types it may
add) and `lossless`; it takes a frozen config dataclass. `requires` raises
`UnsupportedModelError` for model-level problems; `apply` edits the graph in place and
returns a `PassResult` listing every change and every skip with its reason.

Context: a pass declares the `PassContext` keys it `reads` and `writes` (of
`STATE_KEYS`; the run's inputs, `INPUT_KEYS`, every pass may read and none may write),
and those it `invalidates`: entries written before it that its edits make stale
(prune and svd change channel counts and layers, so statistics and ranges measured
before them are dropped). The pipeline checks the declarations after every pass.

Composite: a pass whose `steps()` returns a list is a declared sequence; the pipeline
runs each step like a top-level pass (checked and recorded as `<name>/<step>`) and
then calls the composite's `summarize` with the steps' results.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel estimate of a pre-activation tensor: mean and std over N, H, W.

    `source` says where it came from: "bn" (BatchNormalization beta/gamma),
    "analytic" (propagated from an input prior), "synthetic" (float model run on
    generated inputs) or "calibration" (the user's samples).
    """

    mean: np.ndarray
    std: np.ndarray
    source: str


# Keys a pass must declare to read or write; the run's inputs are read-only for all.
STATE_KEYS = frozenset({"opset", "stats", "ranges"})
INPUT_KEYS = frozenset({"calibration", "input_shapes"})


@dataclass
class PassContext:
    """What a pipeline run knows beside the graph; shared by all its passes.

    `stats` maps a tensor name to the `ChannelStats` of that tensor, so fold-bn can
    hand BatchNormalization statistics to the dfq steps after it. `calibration` holds
    the user's samples (input name -> array) when `--calibration-data` was given.
    `ranges` maps a tensor name to an activation range (lo, hi, source) that a
    quantizing pass should use (set by dfq from statistics, or by calibration).
    `opset` is the model's opset (qdq raises it when it converts the model).
    Inside `tracking()`, every access to a `STATE_KEYS` field is recorded, so the
    pipeline can check a pass against its `reads`/`writes` declarations.
    """

    opset: int = 17
    calibration: dict[str, np.ndarray] | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    stats: dict[str, ChannelStats] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    _touched: set[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __getattribute__(self, key: str) -> Any:
        """Attribute access, recording `STATE_KEYS` reads inside `tracking()`."""
        if key in STATE_KEYS:
            touched = object.__getattribute__(self, "_touched")
            if touched is not None:
                touched.add(key)
        return object.__getattribute__(self, key)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[set[str]]:
        """Yield the set of `STATE_KEYS` accessed (read or written) inside the block."""
        touched: set[str] = set()
        outer = self._touched
        self._touched = touched
        try:
            yield touched
        finally:
            self._touched = outer
            if outer is not None:
                outer.update(touched)


@dataclass(frozen=True)
class Change:
    """One edit: which node, what was done, parameters before and after."""

    node: str
    op: str
    detail: str
    params_before: int = 0
    params_after: int = 0


@dataclass(frozen=True)
class Skip:
    """A node the pass matched but left alone, and why."""

    node: str
    op: str
    reason: str


@dataclass
class PassResult:
    """Everything a pass did and did not do; `notes` holds pass-level facts."""

    name: str
    changes: list[Change] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def change(
        self, node: gs.Node, detail: str, params_before: int = 0, params_after: int = 0
    ) -> None:
        """Record an edit of `node`."""
        self.changes.append(Change(node.name, node.op, detail, params_before, params_after))

    def skip(self, node: gs.Node, reason: str) -> None:
        """Record that `node` was left alone for `reason`."""
        self.skipped.append(Skip(node.name, node.op, reason))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "name": self.name,
            "changes": [dataclasses.asdict(c) for c in self.changes],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class NoConfig:
    """Config of a pass that has no options."""


class Pass:
    """Base class of every pass; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    matches: ClassVar[frozenset[str]] = frozenset()
    creates: ClassVar[frozenset[str]] = frozenset()
    lossless: ClassVar[bool] = False
    config_class: ClassVar[type] = NoConfig
    reads: ClassVar[frozenset[str]] = frozenset()  # STATE_KEYS read from the context
    writes: ClassVar[frozenset[str]] = frozenset()  # STATE_KEYS written (set, replaced, dropped)
    invalidates: ClassVar[frozenset[str]] = frozenset()  # entries written before go stale

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:  # noqa: B027
        """Raise `UnsupportedModelError` when the model as a whole cannot be handled."""

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Edit `graph` in place and return what was done."""
        if self.steps() is not None:
            raise NotImplementedError(f"'{self.name}' is composite: run it with pipeline.run")
        raise NotImplementedError

    def quantizes(self) -> bool:
        """True when the pass leaves QuantizeLinear/DequantizeLinear (only cleanup may follow)."""
        return False

    def steps(self) -> list[Pass] | None:
        """The steps of a composite pass, in order; None for a pass that is one step."""
        return None

    def summarize(self, results: dict[str, PassResult]) -> None:
        """Composite only: add its notes to the steps' results (by step name), once all ran."""

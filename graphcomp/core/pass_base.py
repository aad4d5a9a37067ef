"""The pass contract (DESIGN.md section 2).

A pass declares `name`, `matches` (op types it edits), `creates` (op types it may
add) and `lossless`; it takes a frozen config dataclass. `requires` raises
`UnsupportedModelError` for model-level problems; `apply` edits the graph in place and
returns a `PassResult` listing every change and every skip with its reason.
"""

from __future__ import annotations

import dataclasses
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


@dataclass
class PassContext:
    """What a pipeline run knows beside the graph; shared by all its passes.

    `stats` maps a tensor name to the `ChannelStats` of that tensor, so fold-bn can
    hand BatchNormalization statistics to the dfq steps after it. `calibration` holds
    the user's samples (input name -> array) when `--calibration-data` was given.
    `ranges` maps a tensor name to an activation range (lo, hi, source) that a
    quantizing pass should use (set by dfq from statistics, or by calibration).
    """

    opset: int = 17
    calibration: dict[str, np.ndarray] | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    stats: dict[str, ChannelStats] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float, str]] = field(default_factory=dict)


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

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()

    def requires(self, graph: gs.Graph, ctx: PassContext) -> None:  # noqa: B027
        """Raise `UnsupportedModelError` when the model as a whole cannot be handled."""

    def apply(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Edit `graph` in place and return what was done."""
        raise NotImplementedError

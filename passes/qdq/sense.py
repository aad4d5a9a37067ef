"""Sensitivity of each quantizer and the mixed-precision choice of the fidelity target.

A probe copy of the graph gets every quantizer the plan asks for (the same emission the
pass does, without the integer clamps, which are exact), and then each quantized tensor
t (an activation's Q -> DQ, a dynamic quantizer, a weight's DQ) is replaced by

    x_t + m_t * (dq_t - x_t)

where x_t is the float tensor (the weight's float values) and m_t is element t of one
extra graph input, the mask. One onnxruntime session of that model runs the probe
inputs with any subset of quantizers on: mask 0 is the float model, 1 the fully
quantized one, a one-hot mask the error tensor t causes alone. Fidelity is the output
SNR in dB (float output power over error power, the lowest over the graph outputs).

Two stages keep the cost at a few runs. The float run (mask 0) also returns, per
tensor, the power of x_t and of dq_t - x_t: its local SQNR, every tensor at once (the
first-order estimate of its output SNR alone, if relative error passed unchanged to the
output). The `MAX_FLOAT_SHARE` worst by local SQNR are then measured alone at the output
(one run each), and `choose` keeps the worst of those float, one at a time (unless that
does not raise the measured output SNR with the rest quantized), until the target is
met (one run each; at most `MAX_FLOAT_SHARE` of the quantizers, rounded up; past that
the target is reported as missed). Runs: 2 + 2 x candidates at most, in one session;
the seconds are in the report. The candidates are fewer where the runs would feed more
than `BUDGET_VALUES` input values in all (a large image): the summary then says the
search was cut short by the cost budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Collection, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from graphcomp.core import graph_utils, model_io
from graphcomp.measure import inputs, observe

MASK = "graphcomp_sense_mask"
MAX_FLOAT_SHARE = 0.1  # at most this share of the quantizers is kept float
BUDGET_VALUES = 16 * 3 * 224 * 224  # input values fed over all probe runs, at most
TINY = 1e-30
WEIGHT, ACTIVATION = "weight", "activation"


@dataclasses.dataclass(frozen=True)
class Unit:
    """One quantized tensor of the probe: an activation (by tensor) or a layer's weight."""

    kind: str  # WEIGHT or ACTIVATION
    name: str  # activation tensor name, or the layer (node) name for a weight
    params: int  # weight values, or 0 for an activation


@dataclasses.dataclass
class Outcome:
    """What the probe measured and what it keeps float."""

    target: float
    full_db: float  # every quantizer on
    final_db: float  # the chosen ones float
    local_db: dict[Unit, float]  # the tensor's own SQNR (every quantizer, one run)
    alone_db: dict[Unit, float]  # output SNR with only this quantizer on (candidates)
    floated: list[Unit]
    seconds: float
    runs: int
    budget_cut: bool = False  # fewer candidates than MAX_FLOAT_SHARE: the cost budget

    def table(self, most: int | None = None) -> list[dict[str, object]]:
        """Rows, worst first: tensor, kind, local SQNR, output SNR alone, stays float."""
        kept = set(self.floated)

        def key(u: Unit) -> tuple[float, float]:
            return (self.alone_db.get(u, np.inf), self.local_db[u])

        return [
            {
                "tensor": u.name,
                "kind": u.kind,
                "local_sqnr_db": _round(self.local_db[u]),
                "output_snr_alone_db": _round(self.alone_db[u]) if u in self.alone_db else None,
                "float": u in kept,
            }
            for u in sorted(self.local_db, key=key)[:most]
        ]

    def summary(self) -> str:
        """One line for the report's details table."""
        met = "met" if self.final_db >= self.target else "missed"
        return (
            f"output SNR {self.full_db:.1f} dB all quantized -> {self.final_db:.1f} dB with "
            f"{len(self.floated)} of {len(self.local_db)} tensors float (target "
            f"{self.target:g} dB, {met}); {self.runs} probe runs, {self.seconds:.1f} s"
            + ("; search cut short by the probe's cost budget" if self.budget_cut else "")
        )


def masked(
    graph: gs.Graph, float_weights: dict[str, np.ndarray], acts: Collection[str]
) -> list[Unit]:
    """Put the mask into `graph` (the probe copy, quantizers emitted); the units, in order.

    `float_weights` maps a layer name to its float weight before emission, `acts` are
    the planned activation tensors (a graph output's DQ carries the tensor's name).
    """
    found: list[tuple[Unit, gs.Tensor, gs.Tensor]] = []
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        src = dq.inputs[0]
        quant = graph_utils.producer(src)
        out = dq.outputs[0]
        if quant is not None and quant.op in ("QuantizeLinear", "DynamicQuantizeLinear"):
            x = quant.inputs[0]
            name = x.name if x.name in acts else out.name
            found.append((Unit(ACTIVATION, name, 0), x, out))
            continue
        layers = [c for c in graph_utils.consumers(out) if c.name in float_weights]
        if isinstance(src, gs.Constant) and layers and layers[0].inputs[1] is out:
            w = float_weights[layers[0].name]
            x = graph_utils.new_const(graph, f"{layers[0].name}_float_weight", w)
            found.append((Unit(WEIGHT, layers[0].name, int(w.size)), x, out))
    mask = gs.Variable(MASK, np.float32, [len(found)])
    graph.inputs.append(mask)
    for i, (_, x, y) in enumerate(found):
        _switch(graph, mask, i, x, y)
    return [u for u, _, _ in found]


def _switch(graph: gs.Graph, mask: gs.Tensor, i: int, x: gs.Tensor, y: gs.Tensor) -> None:
    """Readers of `y` read x + mask[i] * (y - x) instead."""
    readers = graph_utils.consumers(y)
    index = graph_utils.new_const(graph, f"{MASK}_{i}", np.asarray(i, np.int64))
    m, d, md = (gs.Variable(graph_utils.fresh_name(graph, f"{y.name}_{s}")) for s in "mdp")
    z = gs.Variable(graph_utils.fresh_name(graph, f"{y.name}_switched"), np.float32)
    for op, ins, out in (("Gather", [mask, index], m), ("Sub", [y, x], d)) + (
        ("Mul", [d, m], md),
        ("Add", [x, md], z),
    ):
        graph.nodes.append(
            gs.Node(op, graph_utils.fresh_name(graph, op), inputs=ins, outputs=[out])
        )
    for reader in readers:
        reader.inputs = [z if t is y else t for t in reader.inputs]
    graph.outputs = [z if t is y else t for t in graph.outputs]
    for base, a in ((f"{MASK}_noise_{i}", d), (f"{MASK}_power_{i}", x)):
        sq = gs.Variable(graph_utils.fresh_name(graph, f"{base}_sq"))
        total = gs.Variable(base, np.float32)
        graph.outputs.append(total)
        graph.nodes.append(
            gs.Node("Mul", graph_utils.fresh_name(graph, "Mul"), inputs=[a, a], outputs=[sq])
        )
        graph.nodes.append(
            gs.Node(
                "ReduceSum",
                graph_utils.fresh_name(graph, "ReduceSum"),
                {"keepdims": 0},
                [sq],
                [total],
            )
        )


def _round(db: float) -> float | None:
    return round(db, 2) if np.isfinite(db) else None


class Probe:
    """The masked model in one session and its float reference on the probe inputs."""

    def __init__(self, graph: gs.Graph, units: list[Unit], feeds: Sequence[inputs.Feeds]) -> None:
        self.units, self.feeds, self.runs = units, list(feeds), 0
        self.values = sum(int(v.size) for one in self.feeds for v in one.values())
        self.outputs = [t.name for t in graph.outputs if not t.name.startswith(MASK)]
        powers = [f"{MASK}_{k}_{i}" for i in range(len(units)) for k in ("noise", "power")]
        self.runner = observe.Runner(model_io.to_model(graph), powers)
        sums = np.zeros(len(powers))
        self.reference: list[list[np.ndarray]] = []
        for one in self.feeds:
            got = self.runner(
                {**one, MASK: np.zeros(len(units), np.float32)}, powers + self.outputs
            )
            sums += [float(got[n]) for n in powers]
            self.reference.append([got[n] for n in self.outputs])
        self.runs += 1
        noise, power = sums[0::2], sums[1::2]
        self.local = {
            u: 10.0 * np.log10(max(p, TINY) / max(e, TINY))
            for u, e, p in zip(units, noise, power, strict=True)
        }

    def searches(self) -> int:
        """Runs left within BUDGET_VALUES, after those made so far."""
        return max(0, BUDGET_VALUES // max(self.values, 1) - self.runs)

    def _outputs(self, mask: np.ndarray) -> list[list[np.ndarray]]:
        self.runs += 1
        return [list(self.runner({**f, MASK: mask}, self.outputs).values()) for f in self.feeds]

    def snr(self, on: Sequence[bool]) -> float:
        """Output SNR (dB, lowest over the outputs) with the quantizers `on` switched on."""
        got = self._outputs(np.asarray(on, np.float32))
        worst = np.inf
        for k in range(len(self.outputs)):
            ref = [np.asarray(r[k], np.float64) for r in self.reference]
            hyp = [np.asarray(h[k], np.float64) for h in got]
            if not all(np.issubdtype(r.dtype, np.floating) for r in ref):
                continue
            power = sum(float(np.sum(r * r)) for r in ref)
            noise = sum(float(np.sum((h - r) ** 2)) for r, h in zip(ref, hyp, strict=True))
            if not np.isfinite(noise):
                return -np.inf
            worst = min(worst, 10.0 * np.log10(max(power, TINY) / max(noise, TINY)))
        return float(worst)


def choose(probe: Probe, target: float, start: float) -> Outcome:
    """The worst tensors by local SQNR measured alone; the worst kept float to `target`.

    `start` is when the probe began (time.perf_counter), for the reported cost.
    """
    n = len(probe.units)
    full = probe.snr([True] * n)
    cap = math.ceil(MAX_FLOAT_SHARE * n)
    alone: dict[Unit, float] = {}
    cut = False
    if full < target:
        fits = probe.searches() // 2  # each candidate: one run alone, one to keep it float
        cut, cap = fits < cap, min(cap, fits)
        worst = sorted(range(n), key=lambda i: probe.local[probe.units[i]])[:cap]
        alone = {probe.units[i]: probe.snr([j == i for j in range(n)]) for i in worst}
    order = sorted(range(n), key=lambda i: alone.get(probe.units[i], np.inf))
    on, floated, now = [True] * n, list[Unit](), full
    for i in order[: len(alone)]:
        if now >= target:
            break
        on[i] = False
        got = probe.snr(on)
        if got <= now:  # no gain with the others quantized: it stays quantized
            on[i] = True
            continue
        floated.append(probe.units[i])
        now = got
    seconds = time.perf_counter() - start
    return Outcome(target, full, now, probe.local, alone, floated, seconds, probe.runs, cut)

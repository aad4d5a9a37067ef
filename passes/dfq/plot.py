"""Charts of a dfq run (optional extra: `pip install graphcomp[plot]`, matplotlib).

- `weight_ranges.png`: per layer, a box plot of the per-channel weight ranges
  (max |w| of each output channel) before and after equalization, log scale: the
  spread a per-tensor quantizer has to cover, and how equalization closed it.
- `weight_sqnr.png`: per layer, the mean per-channel SQNR (dB) of the per-tensor weight quantizer on
  the BN-folded weights (naive) and on the weights dfq hands to qdq.
- `sensitivity.png`: per quantized tensor (graph order), its local SQNR (dB) and, for
  the ones the fidelity probe measured, the output SNR it causes alone; the tensors
  kept float are marked (passes/qdq/sense.py).

matplotlib is imported lazily; without it a `ConfigError` says how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graphcomp.core.errors import ConfigError

MAX_LAYERS = 80  # beyond this the layer axis is thinned so labels stay readable


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install 'graphcomp[plot]'") from e
    return plt


def dfq_charts(directory: str | Path, notes: dict[str, Any]) -> list[str]:
    """Write the dfq charts from a dfq result's notes; returns the paths written."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    ranges = notes.get("equalize", {}).get("channel_ranges", {})
    if ranges:
        written.append(str(weight_range_chart(plt, ranges, out / "weight_ranges.png")))
    sqnr = notes.get("weight_sqnr_db", {})
    if sqnr:
        written.append(str(sqnr_chart(plt, sqnr, out / "weight_sqnr.png")))
    table = notes.get("sensitivity_table") or []
    if table:
        written.append(str(sensitivity_chart(plt, table, out / "sensitivity.png")))
    return written


def _thin(names: list[str]) -> list[str]:
    step = max(1, -(-len(names) // MAX_LAYERS))
    return names[::step]


def weight_range_chart(plt: Any, ranges: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Box plots of per-channel weight ranges per layer, before and after equalization."""
    names = _thin(list(ranges))
    width = max(8.0, 0.35 * len(names))
    fig, axes = plt.subplots(2, 1, figsize=(width, 7.5), sharex=True, sharey=True)
    for ax, key, title in (
        (axes[0], "before", "before equalization (BN folded)"),
        (axes[1], "after", "after equalization"),
    ):
        data = [[max(v, 1e-12) for v in ranges[n][key]] for n in names]
        ax.boxplot(data, whis=(0, 100), widths=0.6)
        ax.set_yscale("log")
        ax.set_ylabel("max |w| per output channel")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=7)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sqnr_chart(plt: Any, sqnr: dict[str, list[float]], path: Path) -> Path:
    """Bars of per-layer weight quantization SQNR: naive vs after dfq."""
    names = _thin(list(sqnr))
    width = max(8.0, 0.35 * len(names))
    fig, ax = plt.subplots(figsize=(width, 4.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [sqnr[n][0] for n in names], 0.4, label="naive per-tensor")
    ax.bar([x + 0.2 for x in xs], [sqnr[n][1] for n in names], 0.4, label="after dfq")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=7)
    ax.set_ylabel("weight SQNR (dB), higher is better")
    ax.set_title("per-layer weight quantization error")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def sensitivity_chart(plt: Any, table: list[dict[str, Any]], path: Path) -> Path:
    """Per tensor: local SQNR bars, output SNR alone dots, the float ones in red."""
    rows = [r for r in table if r["local_sqnr_db"] is not None]
    rows = rows[:: max(1, -(-len(rows) // MAX_LAYERS))]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.3 * len(rows)), 4.5))
    xs = list(range(len(rows)))
    colors = ["tab:red" if r["float"] else "tab:blue" for r in rows]
    ax.bar(xs, [r["local_sqnr_db"] for r in rows], 0.7, color=colors, label="local SQNR")
    alone = [(x, r["output_snr_alone_db"]) for x, r in zip(xs, rows, strict=True)]
    alone = [(x, v) for x, v in alone if v is not None]
    if alone:
        ax.plot(*zip(*alone, strict=True), "k.", label="output SNR, this tensor alone")
    ax.set_xticks(xs, [f"{r['tensor']} ({r['kind'][0]})" for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("dB, higher is better (red: kept float)")
    ax.set_title("per-tensor quantization sensitivity (worst first)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)

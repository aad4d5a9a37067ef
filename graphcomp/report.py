"""The run's record: a rich table for the terminal and the same facts as JSON."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from graphcomp.core.version import __version__
from graphcomp.pipeline import PassRecord
from graphcomp.verify import VerifyResult


@dataclass
class Report:
    """Everything `graphcomp run` did, for people (`render`) and machines (`to_dict`)."""

    source: str
    output: str | None
    passes: list[PassRecord]
    before: dict[str, Any]
    after: dict[str, Any]
    verification: VerifyResult | None = None
    warnings: list[str] = field(default_factory=list)
    stat_sources: dict[str, str] = field(default_factory=dict)
    latency_ratio: float | None = None  # output / original, quick check (graphcomp.measure.speed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, every skip reason included."""
        return {
            "graphcomp_version": __version__,
            "source": self.source,
            "output": self.output,
            "before": self.before,
            "after": self.after,
            "passes": [r.to_dict() for r in self.passes],
            "verification": self.verification.to_dict() if self.verification else None,
            "warnings": self.warnings,
            "latency_ratio": None if self.latency_ratio is None else round(self.latency_ratio, 3),
        }

    def write_json(self, path: str | Path) -> None:
        """Write the JSON report atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)

    def render(self, console: Console) -> None:
        """Print the pass table, the size summary and the verification table."""
        console.print(pass_table(self.passes))
        if any(r.result.skipped or r.result.notes for r in self.passes):
            console.print(details_table(self.passes))
        console.print(size_line(self.before, self.after))
        if self.verification is not None:
            console.print(verify_table(self.verification))
        if self.latency_ratio is not None:
            console.print(
                f"latency: {self.latency_ratio:.2f}x the original's (batch 1, one thread, "
                "quick check; 'graphcomp bench' measures it)"
            )
        for w in self.warnings:
            console.print(f"[yellow]warning:[/] {w}")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _ratio(before: int, after: int) -> str:
    return f"{after / before:.3f}x" if before else "-"


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def pass_table(records: list[PassRecord]) -> Table:
    """One row per pass (a composite: per step, `dfq/equalize`).

    Columns: changes, skips, params/MACs/bytes after (ratio to before it on a second
    line), time.
    """
    table = Table(title="passes")
    table.add_column("pass", no_wrap=True)
    for col in ("changed", "skipped", "params", "MACs", "bytes", "time"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in records:
        table.add_row(
            r.result.name,
            str(len(r.result.changes)),
            str(len(r.result.skipped)),
            f"{human(r.params[1])}\n{_ratio(*r.params)}",
            f"{human(r.macs[1])}\n{_ratio(*r.macs)}",
            f"{human(r.bytes[1], 'B')}\n{_ratio(*r.bytes)}",
            f"{r.seconds:.2f}s",
        )
    return table


def details_table(records: list[PassRecord], most: int = 4) -> Table:
    """Per pass: its scalar notes and its commonest skip reasons with counts."""
    table = Table(title="details (every skip reason is in the JSON report)")
    table.add_column("pass", no_wrap=True)
    table.add_column("what")
    table.add_column("count / value", justify="right")
    for r in records:
        for key, value in r.result.notes.items():
            if isinstance(value, (int, float, str, bool)):
                table.add_row(r.result.name, key, str(value))
        reasons = Counter(_reason_kind(s.reason) for s in r.result.skipped)
        for reason, count in reasons.most_common(most):
            table.add_row(r.result.name, f"skipped: {reason}", str(count))
        if len(reasons) > most:
            table.add_row(
                r.result.name,
                "skipped: other reasons",
                str(sum(c for _, c in reasons.most_common()[most:])),
            )
    return table


def _reason_kind(reason: str) -> str:
    """A reason with names and numbers blanked (`*`), so equal causes group together."""
    kind = re.sub(r"[\w./:-]*[\d_][\w./:-]*", "*", reason)
    return kind if len(kind) <= 80 else kind[:77] + "..."


def size_line(before: dict[str, Any], after: dict[str, Any]) -> str:
    """'params 1.2M -> 0.8M (0.667x), ...'."""
    parts = [
        f"{k} {human(before[k])} -> {human(after[k])} ({_ratio(before[k], after[k])})"
        for k in ("params", "macs", "bytes")
        if k in before and k in after
    ]
    return "model: " + ", ".join(parts)


VERDICT_STYLE = {
    "passed": "[green]passed[/]",
    "failed": "[red]FAILED[/]",
    "unchecked": "[yellow]unchecked[/] (no threshold)",
}


def verify_table(result: VerifyResult) -> Table:
    """One row per output with the fidelity statistics and the verdict in the title."""
    verdict = VERDICT_STYLE[result.verdict]
    table = Table(title=f"verification on {result.input_source}: {verdict}")
    for col in ("output", "max abs", "rel err", "cosine", "SQNR dB", "top-1 agree"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for o in result.outputs:
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}"
        table.add_row(
            o.name,
            f"{o.max_abs_err:.3g}",
            f"{o.rel_err:.3g}",
            f"{o.cosine:.6f}",
            f"{o.sqnr_db:.1f}",
            top1,
        )
    notes = list(result.failures)
    if result.verdict == "unchecked":
        notes.append(
            "lossy passes and no threshold: give --min-cosine / --min-top1 / --max-rel-err"
        )
    if result.synthetic:
        notes.append("synthetic inputs estimate the error and do not prove it: give --inputs")
    table.caption = "; ".join(notes) or None
    return table

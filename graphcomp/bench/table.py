"""`graphcomp bench` output for people: a rich table for the terminal, Markdown for the README.

Both show the same cells, made once by `cells`; the lines under the table say how each
figure was measured (thread counts, runs, cores, what the peak memory covers).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from graphcomp.bench.run import BenchResult, Row
from graphcomp.report import human


def _ratio(value: int | None, reference: int | None) -> str:
    if value is None:
        return "-"
    text = human(value, "B")
    return f"{text} ({value / reference:.2f}x)" if reference else text


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _peak(row: Row) -> str:
    if row.compile_peak_mb is None or row.compile_base_mb is None:
        return "-"
    return f"{row.compile_peak_mb:.0f} (+{row.compile_peak_mb - row.compile_base_mb:.0f})"


def headers(result: BenchResult) -> list[str]:
    """Column titles; one latency column per (batch, threads); t=def(n): ORT's default."""
    cores = result.machine.get("physical_cores") or "?"
    lat = [f"ms b={t.batch} t={t.threads or f'def({cores})'}" for t in result.rows[0].latency]
    return [
        "config",
        "params",
        "MACs",
        "disk",
        "weights",
        *lat,
        "compile s",
        "peak MB",
        "top-1",
        "agree",
        "SQNR dB",
        "verify",
    ]


def cells(row: Row, original: Row, n_latency: int) -> list[str]:
    """One row of strings matching `headers`."""
    if row.error:
        return [row.config, *["-"] * (n_latency + 9), "error"]
    check = row.verification or {}
    lat = [
        f"{_ms(t.median_ms)} ({_ms(t.min_ms)})" if t.median_ms is not None else "n/a"
        for t in row.latency
    ]
    return [
        row.config if row.kind != "original" else "original (float)",
        human(row.params or 0),
        human(row.macs or 0),
        _ratio(row.disk_bytes, original.disk_bytes),
        _ratio(row.weight_bytes, original.weight_bytes),
        *lat,
        _num(row.compile_s, ".2f"),
        _peak(row),
        _num(row.top1, ".4f"),
        _num(row.agreement, ".4f"),
        _num(check.get("sqnr_db"), ".1f"),
        check.get("verdict", "-"),
    ]


def notes(result: BenchResult) -> list[str]:
    """How the figures were measured, then each row's note or error."""
    s, m = result.settings, result.machine
    base = [r.compile_base_mb for r in result.rows if r.compile_base_mb is not None]
    top1 = f"top-1 on {s['eval_data']}" if s["eval_data"] else "no eval set (top-1 not measured)"
    load = " to ".join(f"{x:.1f}" for x in m.get("load_avg_1m", []) if x is not None)
    lines = [
        f"onnxruntime {m['onnxruntime']} CPU on {m['processor']}, {m['cpu_count']} logical "
        f"CPUs, {m['physical_cores']} physical cores; 1-minute load average {load or '?'} "
        "during the run (other processes share the CPUs).",
        f"latency: median (min) ms of {s['runs']} timed runs after {s['warmup']} warm-up runs, "
        f"spread over {s['rounds']} rounds that interleave the models; t=1: one intra-op "
        "thread; t=def(n): onnxruntime's default (one per physical core); seeded inputs.",
        f"{top1}; agree (same top-1 as the original), SQNR dB (worst output) and verify on "
        f"{s['fidelity_inputs']}; lossless pass lists must stay within 1e-4 relative error, "
        "unchecked = no threshold given (--max-rel-err, --min-cosine, --min-top1).",
        "compile s, peak MB: each compile runs in a fresh child process, imports done "
        "before the clock starts; peak MB = the child's max RSS (getrusage), (+N) = above "
        "its RSS after imports" + (f" ({min(base):.0f} MB for graphcomp alone)." if base else "."),
    ]
    for r in result.rows[1:]:
        lines.append(f"{r.config}: " + (f"ERROR {r.error}" if r.error else r.note))
    return lines


def render(result: BenchResult, console: Console) -> None:
    """Print the bench table and its notes; one column per config when rows are too wide."""
    heads = headers(result)
    n_lat = len(result.rows[0].latency)
    body = [cells(row, result.rows[0], n_lat) for row in result.rows]
    width = sum(max(len(h), *(len(r[i]) for r in body)) + 3 for i, h in enumerate(heads))
    table = Table(title=f"bench {result.model}")
    if width <= console.width:
        for h in heads:
            table.add_column(h, justify="left" if h == "config" else "right")
        for line in body:
            table.add_row(*line)
    else:
        table.add_column("")
        for line in body:
            table.add_column(line[0], justify="right")
        for i, h in enumerate(heads[1:], 1):
            table.add_row(h, *(line[i] for line in body))
    console.print(table)
    for note in notes(result):
        console.print(note, markup=False, highlight=False)


def markdown(result: BenchResult) -> str:
    """The same table as GitHub Markdown, notes as a list under it."""
    heads = headers(result)
    n_lat = len(result.rows[0].latency)
    lines = [
        f"**{result.model}**",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "|".join(":---" if h == "config" else "---:" for h in heads) + "|",
    ]
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in cells(r, result.rows[0], n_lat)) + " |"
        for r in result.rows
    ]
    lines.append("")
    lines += [f"- {line}" for line in notes(result)]
    return "\n".join(lines) + "\n"

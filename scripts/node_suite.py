"""Run every pass on the onnx wheel's backend node cases that onnxruntime runs and matches.

    python scripts/node_suite.py --passes prune,svd,dfq --json /tmp/node_suite.json

The cases and outcomes are those of tests/robustness/node_cases.py (the slow test
tests/robustness/test_node_suite.py runs the same): "ok", "refused" (exit 2, one line),
"failed" (exit 1), "crash" (exit 3 or a traceback), "invalid" (onnx.checker rejects the
written model). Cases onnxruntime cannot run or does not match are counted apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.robustness.node_cases import DEFAULT_PASS_LISTS, run_case, runnable_cases


def main() -> None:
    """Run the suite and print counts per pass list (and a JSON file of every outcome)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", action="append", help="a pass list (repeatable)")
    parser.add_argument("--only", help="substring of the case names to run")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args()
    pass_lists = args.passes or DEFAULT_PASS_LISTS
    results: dict[str, dict[str, tuple[str, str]]] = {}
    chosen, skipped = runnable_cases(args.only)
    with tempfile.TemporaryDirectory() as tmp:
        for case in chosen:
            folder = Path(tmp) / case.name
            folder.mkdir()
            results[case.name] = run_case(case, pass_lists, folder)
    print(f"{len(results)} cases onnxruntime runs and matches ({skipped} others not run)")
    for spec in pass_lists:
        counts = Counter(r[spec][0] for r in results.values())
        print(f"{spec:24s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

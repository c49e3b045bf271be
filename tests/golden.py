"""Regenerate golden files: `.venv/bin/python tests/golden.py` (review the diff!).

What each golden is: tests/data/golden/README.md.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from rich.console import Console

from tests.unit.test_export_and_summary import GOLDEN, TRACE_GOLDEN, build
from tracekit.export.dump import dump_trace
from tracekit.export.reader import parse_trace
from tracekit.model.summary import summarize
from tracekit.render.summary import render_summary

if __name__ == "__main__":
    GOLDEN.mkdir(parents=True, exist_ok=True)
    data = build()
    TRACE_GOLDEN.write_text(dump_trace(parse_trace(data)))
    console = Console(width=100, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render_summary(summarize(parse_trace(data))))
    (GOLDEN / "mixed5.summary.txt").write_text(console.file.getvalue())  # type: ignore[attr-defined]
    from tracekit.config import load_original_names
    from tracekit.model.explain import TraceIndex, explain_chain, select_chain
    from tracekit.render.explain import render_explanation

    index = TraceIndex(parse_trace(data))
    walk = explain_chain(index, select_chain(index, None, "virtual", 1, 40), load_original_names())
    console = Console(width=140, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render_explanation(walk))
    (GOLDEN / "mixed5.explain-virtual.txt").write_text(console.file.getvalue())  # type: ignore[attr-defined]
    from tests.unit.test_capture_program import GOLDEN as PROGRAMS_GOLDEN
    from tests.unit.test_capture_program import golden_text

    PROGRAMS_GOLDEN.write_text(golden_text())
    print("golden files written to", GOLDEN)
    from tests.unit.test_l2report import GOLDEN as L2_GOLDEN
    from tests.unit.test_l2report import REPORT as L2_REPORT
    from tests.unit.test_l2report import sources_text
    from tracekit.model.l2report import parse_report

    L2_GOLDEN.write_text(sources_text(parse_report(L2_REPORT.read_text())))

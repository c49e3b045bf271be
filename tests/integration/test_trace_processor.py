"""Traces through Perfetto's own trace processor: the golden fixture, `check`, `query`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.cli import run_tracekit
from tests.trace_check import assert_trace_ok, trace_processor
from tests.unit.test_export_and_summary import build

pytestmark = pytest.mark.integration

RAW = Path(__file__).parents[1] / "data" / "raw" / "mixed5"


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tp") / "mixed5.pftrace"
    out.write_bytes(build())
    return out


def test_the_golden_trace_passes(golden: Path) -> None:
    assert_trace_ok(golden)


def test_check_command(golden: Path, tmp_path: Path) -> None:
    tp = trace_processor()
    ok = run_tracekit("check", str(golden), "--trace-processor", tp, "--json")
    assert ok.returncode == 0, ok.stderr
    assert all(c["ok"] for c in json.loads(ok.stdout)) and len(json.loads(ok.stdout)) == 5
    cut = tmp_path / "cut.pftrace"
    cut.write_bytes(golden.read_bytes()[: golden.stat().st_size // 2])
    broken = run_tracekit("check", str(cut), "--trace-processor", tp)
    assert broken.returncode == 1 and "the trace is whole" in broken.stderr, broken.stderr
    assert "Traceback" not in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
    garbage = tmp_path / "noise.pftrace"
    garbage.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 64)
    bad = run_tracekit("check", str(garbage), "--trace-processor", tp)
    assert bad.returncode == 2 and "cannot load" in bad.stderr, bad.stderr


def test_query_with_the_trace_processor(golden: Path) -> None:
    # Chains are the slices holding a chain row (model/table.py), whatever their title.
    sql = (
        "select extract_arg(arg_set_id, 'debug.source_kind') kind, count(*) n from slice"
        " where extract_arg(arg_set_id, 'debug.tracekit_row') = 'chain' group by 1 order by 1"
    )
    out = run_tracekit("query", str(golden), sql, "--trace-processor", trace_processor())
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in io.StringIO(out.stdout)]
    assert {r["kind"]: r["n"] for r in rows} == {"irq_line": 5, "irqfd": 5, "sgi": 5, "timer": 20}
    wrong = run_tracekit("query", str(golden), "select nope from nothing", "--trace-processor",
                         trace_processor())  # fmt: skip
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr

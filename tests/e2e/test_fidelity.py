"""Every chain starts at the source that really queued it (issue 12 acceptance).

For each scenario and KVM mode, `record --count 100`: complete chains equal the workload's
count per class, and every complete chain's source, read off the recording (the queue's
call stack), is the source the workload reports for that (INTID, vCPU) — 100%, with no
chain of class "unknown". Classes never come from the workload: it only checks them.
Every trace also passes Perfetto's own trace processor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit
from tests.trace_check import acked, assert_trace_ok

pytestmark = pytest.mark.e2e

CASES = [
    (mode, scenario, ())
    for mode in ("vhe", "nvhe")
    for scenario in ("mixed", "timer", "irqfd", "irqline", "ipi")
] + [("vhe", "mixed", ("--vcpus", "8"))]


def record(out: Path, mode: str, scenario: str, extra: tuple[str, ...]) -> dict[str, Any]:
    proc = run_tracekit(
        "record", "--kvm-mode", mode, "--scenario", scenario, "--count", "100", *extra,
        "--json", "-o", str(out), timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


@pytest.mark.parametrize(
    ("mode", "scenario", "extra"), CASES, ids=[f"{m}-{s}{''.join(e)}" for m, s, e in CASES]
)
def test_sources_and_classes_from_the_recording(
    tmp_path: Path, guest_assets: object, mode: str, scenario: str, extra: tuple[str, ...]
) -> None:
    out = tmp_path / f"{scenario}.pftrace"
    s = record(out, mode, scenario, extra)
    assert "unknown" not in s["classes"], s["classes"]
    used = {c: v for c, v in s["classes"].items() if v["ground_truth"]}
    assert used, "the scenario produced no interrupts"
    for cls, c in used.items():
        assert acked(c) == c["ground_truth"] and c["partial_chains"] == 0, (cls, c)
        assert c["source_checked"] == c["complete_chains"], (cls, c)
        assert c["source_matches"] == c["source_checked"], (cls, s["source_mismatches"])
    assert s["source_mismatches"] == []
    assert_trace_ok(out)

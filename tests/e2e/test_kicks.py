""" "On a single core there is only one flow of execution: what does a kick even mean?"
(../shared/notes/original-flow.md) — answered by two recordings of the same workload, on
one L1 CPU and on two (docs/kicks.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit
from tests.trace_check import assert_trace_ok

pytestmark = pytest.mark.e2e


def kicks(out: Path, machine: str) -> dict[str, Any]:
    rec = run_tracekit("record", "--machine", machine, "--scenario", "ipi", "--count", "20",
                       "--json", "-o", str(out), timeout=900)  # fmt: skip
    assert rec.returncode == 0, rec.stderr[-3000:]
    assert json.loads(rec.stdout)["classes"]["ipi"]["complete_chains"] == 20
    assert_trace_ok(out)
    data: dict[str, Any] = json.loads(
        run_tracekit("explain", str(out), "--kicks", "--json", check=True).stdout
    )
    return data


def test_one_cpu_never_sends_a_kick_ipi_two_cpus_do(tmp_path: Path, guest_assets: object) -> None:
    one = kicks(tmp_path / "one.pftrace", "vhe-1cpu")
    two = kicks(tmp_path / "two.pftrace", "vhe")
    assert one["l1_cpus"] == 1 and two["l1_cpus"] == 2
    assert one["kicks"] > 0 and one["ipis_sent"] == 0
    assert not any(r["target"] == "in guest" for r in one["by_outcome"])
    assert two["ipis_sent"] > 0

"""The kernel matrix: the same acceptance on Linux 6.12 (`record --kernel 6.12`, fetched
from Debian 12's backports and cached by `make test`'s set-up) as the default 6.1 gets in
test_record.py, test_nvhe.py and test_fidelity.py (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit
from tests.trace_check import acked, assert_trace_ok

pytestmark = pytest.mark.e2e


def record(out: Path, *extra: str) -> dict[str, Any]:
    proc = run_tracekit("record", "--kernel", "6.12", "--scenario", "mixed", "--count", "20",
                        "--json", "-o", str(out), *extra, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_trace_ok(out)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def complete(s: dict[str, Any]) -> None:
    assert s["kernel"].startswith("6.12"), s["kernel"]
    assert "unknown" not in s["classes"]
    for cls in ("hardware", "virtual", "ipi"):
        c = s["classes"][cls]
        assert c["ground_truth"] > 0 and acked(c) == c["ground_truth"], (cls, c)
        assert c["partial_chains"] == 0 and c["source_matches"] == c["complete_chains"], (cls, c)
    assert s["phases_seen"] == ["A", "B", "C", "D", "E", "F"]


@pytest.mark.parametrize("mode", ["vhe", "nvhe"])
def test_612_chains_equal_ground_truth(tmp_path: Path, guest_assets: object, mode: str) -> None:
    s = record(tmp_path / f"{mode}.pftrace", "--kvm-mode", mode)
    complete(s)
    assert s["kvm_mode"] == mode
    for cls in ("hardware", "virtual", "ipi"):
        c_p50 = s["phase_latency_ns"][cls]["C"]["p50"]
        assert (c_p50 > 0) if mode == "nvhe" else (c_p50 == 0), (mode, cls, c_p50)
    meta = json.loads((tmp_path / f"{mode}.raw" / "meta.json").read_text())
    assert meta["probe_set"] == "linux-6.12" and meta["kernel_family"] == "6.12"


def test_612_inferred_values_agree_with_gdb_reads(tmp_path: Path, guest_assets: object) -> None:
    s = record(tmp_path / "read.pftrace", "--read-values")
    complete(s)
    inference = s["inference"]
    assert not any(v for k, v in inference.items() if k.endswith(".disagreed")), inference
    assert sum(v for k, v in inference.items() if k.endswith(".agreed")) > 500
    merge = json.loads((tmp_path / "read.raw" / "meta.json").read_text())["merge"]
    assert merge["pointers_agreed"] > 0 and merge["pointers_disagreed"] == 0


def test_612_cached_default_is_unchanged(guest_assets: Any) -> None:
    assert guest_assets.kernel_family == "6.1", "--kernel 6.12 must not replace the default"

"""nVHE: phase C is a real EL2 -> EL1 transition; `diff` compares VHE with nVHE (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit
from tests.trace_check import acked, assert_trace_ok

pytestmark = pytest.mark.e2e


def record(out: Path, mode: str) -> dict[str, Any]:
    proc = run_tracekit(
        "record",
        "--kvm-mode",
        mode,
        "--scenario",
        "mixed",
        "--count",
        "10",
        "--json",
        "-o",
        str(out),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_trace_ok(out)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, guest_assets: object) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("modes")
    return {
        mode: (tmp / f"{mode}.pftrace", record(tmp / f"{mode}.pftrace", mode))
        for mode in ("nvhe", "vhe")
    }


def test_nvhe_chains_complete_with_real_phase_c(traces: dict[str, Any]) -> None:
    out, s = traces["nvhe"]
    assert s["kvm_mode"] == "nvhe"
    for cls in ("hardware", "virtual", "ipi"):
        c = s["classes"][cls]
        assert c["ground_truth"] > 0 and acked(c) == c["ground_truth"], (cls, c)
        assert s["phase_latency_ns"][cls]["C"]["p50"] > 0  # EL2 -> EL1 takes time
    assert s["phases_seen"] == ["A", "B", "C", "D", "E", "F"]
    raw = out.with_suffix(".raw")
    meta = json.loads((raw / "meta.json").read_text())
    assert meta["vbar_el2"] and meta["hyp_va_delta"]
    hyp = {p["name"] for p in meta["probes"] if p["hyp"]}
    assert {"guest_exit_nvhe", "guest_eret_nvhe"} <= hyp
    assert all(meta["merge"]["per_probe"].get(n, 0) > 0 for n in hyp)
    hits = [json.loads(line) for line in (raw / "hits.jsonl").read_text().splitlines()]
    if meta["plugin_values"]:  # QEMU 10's default: the plugin placed the hyp probes too
        assert hits == [] and meta["stops"] == 0
    else:
        assert hits and all(h["el"] == 1 and h["world"] == "l1-host" for h in hits)


def test_diff_shows_both_modes(traces: dict[str, Any]) -> None:
    out = run_tracekit("diff", str(traces["vhe"][0]), str(traces["nvhe"][0]), "--json", check=True)
    d = json.loads(out.stdout)
    assert (d["a"]["kvm_mode"], d["b"]["kvm_mode"]) == ("vhe", "nvhe")
    c_rows = [r for r in d["phases"] if r["phase"] == "C"]
    assert c_rows and all(r["a_p50_ns"] == 0 and r["b_p50_ns"] > 0 for r in c_rows)
    assert {r["class"] for r in d["phases"]} == {"hardware", "virtual", "ipi"}

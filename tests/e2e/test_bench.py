"""`tracekit bench` runs and reports sane numbers (a benchmark, not a timed test)."""

from __future__ import annotations

import json

import pytest

from tests.cli import run_tracekit

pytestmark = pytest.mark.e2e

KEYS = (
    "host_ms_per_event",
    "events_per_interrupt",
    "host_ms_per_interrupt",
    "host_ms_per_stop",
    "host_ms_per_stop_paused",
    "host_ms_per_stop_after",
    "stops_per_interrupt",
    "mi_roundtrip_ms",
    "guest_dilation",
    "export_events_per_s",
    "export_ratio_vs_raw",
    "export_peak_rss_mb",
    "ready_s",
)
#: Differences of two host-timed runs: a tiny run on a busy machine can make them <= 0.
NOISY = ("host_ms_per_stop", "host_ms_per_stop_after")


def test_bench_reports_every_figure(guest_assets: object) -> None:
    out = run_tracekit(
        "bench",
        "--scenario",
        "ipi",
        "--count",
        "5",
        "--export-events",
        "20000",
        "--json",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    for key in KEYS:
        assert isinstance(data[key], int | float) and data[key] == data[key], key  # no NaN
    # (traced - untraced) / stops can come out <= 0 for a tiny run on a busy machine, and
    # with icount sleep=on L1's clock also runs through idle periods in host time, so the
    # dilation of a sub-millisecond workload is noise; only sanity is checked here.
    for key in KEYS:
        if key not in NOISY:
            assert data[key] > 0, key
    assert data["events_per_interrupt"] > 5
    assert data["guest_dilation"] < 1000
    # Present, non-empty, and each a verdict on a reported figure (an empty or missing
    # "targets" would make the subset check below pass on nothing).
    targets = data.get("targets")
    assert isinstance(targets, dict) and targets, f"no targets in the bench report: {targets!r}"
    assert set(targets) <= set(KEYS)
    for key, verdict in targets.items():
        assert isinstance(verdict["met"], bool) and verdict["target"], key

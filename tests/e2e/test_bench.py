"""`tracekit bench` runs and reports sane numbers (a benchmark, not a timed test), for
the host's QEMU and QEMU 10 side by side in one run (one QEMU where the host's is 10)."""

from __future__ import annotations

import json
import math
import shutil
from typing import Any

import pytest

from tests.cli import run_tracekit
from tests.qemus import qemu10

pytestmark = pytest.mark.e2e

#: Figures of every QEMU's run.
RUN_KEYS = (
    "traced_untraced_wall_ratio",
    "overhead_ms_per_interrupt",
    "host_ms_per_event",
    "events_per_interrupt",
    "host_ms_per_interrupt",
    "stops_per_interrupt",
    "mi_roundtrip_ms",
    "guest_dilation",
    "ready_s",
)
#: Figures per debugger stop: None (not a figure) in a run without a stop.
PER_STOP = ("host_ms_per_stop", "host_ms_per_stop_paused", "host_ms_per_stop_after")
EXPORT_KEYS = ("export_events_per_s", "export_ratio_vs_raw", "export_peak_rss_mb")
#: Differences of two host-timed runs: a tiny run on a busy machine can make them <= 0.
NOISY = ("host_ms_per_stop", "host_ms_per_stop_after", "overhead_ms_per_interrupt")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _check_run(run: dict[str, Any]) -> None:
    for key in RUN_KEYS:
        assert _number(run[key]), (run["qemu"], key, run[key])
        if key not in NOISY and key != "stops_per_interrupt":
            assert run[key] > 0, (run["qemu"], key)
    assert (run["stops_per_interrupt"] == 0) is run["plugin_values"], run["qemu"]
    for key in PER_STOP:
        if run["plugin_values"]:
            assert run[key] is None, key
        else:
            assert _number(run[key]), key
    assert run["events_per_interrupt"] > 5
    # With icount sleep=on L1's clock also runs through idle periods in host time, so the
    # dilation of a sub-millisecond workload is noise; only sanity is checked here.
    assert run["guest_dilation"] < 1000
    targets = run["targets"]
    assert isinstance(targets, dict) and targets, f"no targets in a run: {targets!r}"
    assert set(targets) <= set(RUN_KEYS)
    for key, verdict in targets.items():
        assert isinstance(verdict["met"], bool) and verdict["target"], key


def test_bench_reports_every_figure_for_each_qemu(guest_assets: object) -> None:
    from tracekit.config import load_tools

    host = shutil.which(load_tools().qemu) or load_tools().qemu
    newer = qemu10()
    qemus = [host] if newer in (host, load_tools().qemu) else [host, newer]
    args = [a for q in qemus for a in ("--qemu", q)]
    out = run_tracekit(
        "bench", "--scenario", "ipi", "--count", "5", "--export-events", "20000", "--json",
        *args, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    runs = data["runs"]
    assert [r["qemu"] for r in runs] == qemus
    for run in runs:
        _check_run(run)
    assert runs[-1]["plugin_values"] is True  # QEMU 10: record's default mode
    # The top level is the first QEMU's run, plus the export figures.
    for key in RUN_KEYS:
        assert data[key] == runs[0][key], key
    for key in EXPORT_KEYS:
        assert _number(data[key]) and data[key] > 0, key
    targets = data["targets"]
    assert set(EXPORT_KEYS) <= set(targets) <= set(RUN_KEYS) | set(EXPORT_KEYS)

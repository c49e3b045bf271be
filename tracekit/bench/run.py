"""``tracekit bench``: tracing overhead and export throughput, measured in one go.

Runs the same scenario untraced and traced (so the ratios come from one run of the
benchmark), and exports synthetic events in a child process to measure throughput and
peak memory. Figures are reported, not asserted; ``docs/performance.md`` keeps them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.config import MachineProfile, ToolPaths, load_linux_l2_config, load_scenarios
from tracekit.errors import TracekitError
from tracekit.guest.assets import GuestAssets
from tracekit.guest.linux_l2 import load_linux_l2
from tracekit.guest.linux_run import run_linux_l2
from tracekit.guest.runner import ScenarioRequest, run_scenario
from tracekit.model.meta import MergeReport
from tracekit.record.options import RecordOptions
from tracekit.record.recorder import Recorder

__all__ = ["EXPORT_TARGETS", "RUN_TARGETS", "QemuUnderTest", "bench_export", "run_bench"]

#: name -> (comparison, target), per QEMU run: issue 14's (the first four, for QEMU 10
#: with plugin-read values) and issue 6's host time per event.
RUN_TARGETS: dict[str, tuple[str, float]] = {
    "traced_untraced_wall_ratio": ("<=", 1.5),
    "overhead_ms_per_interrupt": ("<=", 1.0),
    "stops_per_interrupt": ("==", 0),
    "guest_dilation": ("<=", 1.05),
    "ready_s": ("<=", 5),
    "host_ms_per_event": ("<=", 1.0),
}
#: Of the export benchmark (issue 6; still this round's).
EXPORT_TARGETS: dict[str, tuple[str, float]] = {
    "export_events_per_s": (">=", 100_000),
    "export_ratio_vs_raw": ("<=", 2.0),
    "export_peak_rss_mb": ("<=", 200),
}
#: Figures that divide by the number of stops: none without a stop.
PER_STOP = (
    "host_ms_per_stop",
    "host_ms_per_stop_raw",
    "host_ms_per_stop_paused",
    "host_ms_per_stop_after",
)


@dataclass(frozen=True)
class QemuUnderTest:
    """One QEMU to measure, and whether its traced run has the plugin read the values."""

    qemu: str
    plugin_values: bool


def _verdicts(
    figures: dict[str, Any], targets: dict[str, tuple[str, float]]
) -> dict[str, dict[str, Any]]:
    checks = {"<=": float.__le__, ">=": float.__ge__, "==": float.__eq__}
    return {
        name: {
            "target": f"{op} {value:g}",
            "met": figures[name] is not None and checks[op](float(figures[name]), float(value)),
        }
        for name, (op, value) in targets.items()
    }


def bench_export(n_events: int, workdir: Path) -> dict[str, float]:
    """Export ``n_events`` synthetic events in a child; its own peak RSS via wait4."""
    out = workdir / "synthetic.pftrace"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracekit.bench.export_worker", str(n_events), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    data = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise TracekitError(f"export benchmark child failed (exit {proc.returncode})")
    figures: dict[str, float] = json.loads(data)
    figures["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return figures


def run_bench(
    req: ScenarioRequest,
    profile: MachineProfile,
    assets: GuestAssets,
    tools: ToolPaths,
    *,
    export_events: int,
    qemus: Sequence[QemuUnderTest],
    report: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """The export benchmark once, then for each QEMU the scenario untraced and traced,
    side by side. The top level repeats the first QEMU's figures (the report's shape
    before several QEMUs could be compared); ``runs`` has every QEMU's."""
    results: dict[str, Any] = {
        "scenario": req.scenario.name,
        "count": req.count,
        "vcpus": req.vcpus,
        "machine": profile.name,
        "export_events": export_events,
        "host": os.uname().machine,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory(prefix="tracekit-bench-") as tmp:
        work = Path(tmp)
        report(f"export: {export_events} synthetic events")
        ex = bench_export(export_events, work)
        export = {
            "export_events_per_s": round(ex["events"] / ex["export_s"]),
            "export_ratio_vs_raw": round(ex["export_s"] / ex["serialize_s"], 2),
            "export_peak_rss_mb": round(ex["peak_rss_mb"], 1),
        }
        runs = []
        for n, under_test in enumerate(qemus):
            run_tools = dataclasses.replace(tools, qemu=under_test.qemu)
            runs.append(
                _measure(req, profile, assets, run_tools, under_test, work / f"q{n}", report)
            )
    results.update(runs[0])
    results.update(export)
    # A new dict: runs[0]'s own detail stays that run's (update() would share it).
    results["detail"] = {
        **runs[0]["detail"],
        "export_s": round(ex["export_s"], 3),
        "serialize_s": round(ex["serialize_s"], 3),
        "export_packets": ex["packets"],
        "export_bytes": ex["bytes"],
    }
    results["targets"] = {**runs[0]["targets"], **_verdicts(export, EXPORT_TARGETS)}
    results["runs"] = runs
    return results


def _measure(
    req: ScenarioRequest,
    profile: MachineProfile,
    assets: GuestAssets,
    tools: ToolPaths,
    under_test: QemuUnderTest,
    work: Path,
    report: Callable[[str], None],
) -> dict[str, Any]:
    """One QEMU: the scenario untraced, then recorded; the figures of the pair."""
    mode = "plugin-read values" if under_test.plugin_values else "GDB stops"
    work.mkdir()
    report(f"untraced {req.scenario.name} run on {under_test.qemu}")
    initrd = None
    if req.scenario.linux_l2:
        # A Linux L2: the scenario's wall is L1 ready -> L2's report; the guest's clock
        # is L2's own over the window (model/l2truth.py ground_truth_of).
        l2 = load_linux_l2()
        initrd = l2.l1_initramfs_path
        run = run_linux_l2(req.scenario.name, load_linux_l2_config(), profile, l2, tools)
        untraced = run.wall_report_s - run.wall_l1_ready_s
        untraced_guest_ns = int(run.report.window_s * 1e9)
    else:
        plain = run_scenario(req, profile, assets, tools)
        untraced, untraced_guest_ns = plain.wall_scenario_s, plain.ground_truth.l1_ns
    report(f"traced {req.scenario.name} run on {under_test.qemu} ({mode})")
    opts = RecordOptions(
        req,
        profile,
        work / "bench.pftrace",
        plugin_values=under_test.plugin_values,
        workload_sources=load_scenarios().workload_sources,
        initrd=initrd,
    )
    rec = Recorder(opts, assets, tools).run()
    if rec.ground_truth is None or rec.incomplete_reason:
        raise TracekitError(
            f"the traced run on {under_test.qemu} did not complete: {rec.incomplete_reason}"
        )
    meta = rec.meta
    merged = meta.merge or MergeReport()
    # A run that reached its ground truth learnt these (record/metadata.py RunFacts).
    truth_s, ready_s, stops = meta.ground_truth_s, meta.l1_ready_s, meta.stops_at_ground_truth
    if truth_s is None or ready_s is None or stops is None:
        raise TracekitError("the traced run reached its ground truth but did not time it")
    traced_window = truth_s - ready_s
    events = len(rec.events)
    debug_stops = merged.debug_stops
    paused_s = float(merged.debug_paused_s)
    interrupts = sum(rec.ground_truth.per_class().values())
    figures: dict[str, Any] = {
        "qemu": under_test.qemu,
        "qemu_version": meta.qemu_version,
        "plugin_values": under_test.plugin_values,
        # Issue 14's two: what tracing costs the scenario, as a ratio and per interrupt.
        "traced_untraced_wall_ratio": round(traced_window / max(untraced, 1e-9), 3),
        "overhead_ms_per_interrupt": round(
            (traced_window - untraced) * 1000 / max(interrupts, 1), 3
        ),
        "host_ms_per_event": round(traced_window * 1000 / max(events, 1), 3),
        "events_per_interrupt": round(events / max(interrupts, 1), 2),
        # Per interrupt too: more stop-free probes lower the per-event figure alone.
        "host_ms_per_interrupt": round(traced_window * 1000 / max(interrupts, 1), 2),
        "stops_per_interrupt": round(stops / max(interrupts, 1), 2),
        "host_ms_per_stop": round((traced_window - untraced) * 1000 / max(stops, 1), 3),
        "host_ms_per_stop_raw": round(traced_window * 1000 / max(stops, 1), 3),
        # Of a stop's cost: the time the VM stays stopped (QEMU's own gdbstub trace
        # events), and the rest, which is the guest running slower afterwards (QEMU
        # 7.2 flushes its translation cache at every breakpoint stop).
        "host_ms_per_stop_paused": round(paused_s * 1000 / max(debug_stops, 1), 3),
        "host_ms_per_stop_after": round(
            ((traced_window - untraced) - paused_s) * 1000 / max(stops, 1), 3
        ),
        "mi_roundtrip_ms": meta.mi_roundtrip_ms,
        "guest_dilation": round(rec.ground_truth.l1_ns / max(untraced_guest_ns, 1), 3),
        "ready_s": meta.ready_s,
        "detail": {
            "traced_scenario_wall_s": round(traced_window, 3),
            "untraced_scenario_wall_s": round(untraced, 3),
            "events": events,
            "stops": stops,
            "interrupts": interrupts,
            "l1_ns_traced": rec.ground_truth.l1_ns,
            "l1_ns_untraced": untraced_guest_ns,
        },
    }
    if stops == 0:
        # No stop to share the cost between (plugin-read values): not a figure.
        figures.update(dict.fromkeys(PER_STOP))
    figures["targets"] = _verdicts(figures, RUN_TARGETS)
    return figures

"""The recording's ``meta.json``: what it was asked, what it saw, how it ended.

Values learnt while running go into :class:`RunFacts` (typed, written by the step that
learns them); the dict is put together once, at the end, in the order of the keys a
recording always wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracekit.guest.assets import GuestAssets
from tracekit.probes.resolve import ResolvedProbeSet
from tracekit.record.merge import MergeStats
from tracekit.record.options import LiveStats, RecordOptions
from tracekit.record.resolve import Resolution

__all__ = ["RunFacts", "final_meta", "initial_meta", "merge_meta", "probe_meta"]


@dataclass
class RunFacts:
    """What the steps learn while the VM runs; None: not reached (the key is left out)."""

    qemu_version: str | None = None
    cpus: Any = None
    mi_roundtrip_ms: float | None = None
    ready_s: float | None = None
    #: nVHE: the EL2 VA of the hyp code minus its kernel VA, and VBAR_EL2 it came from.
    hyp_va_delta: int | None = None
    vbar_el2: int | None = None
    #: nVHE with the plugin placing the hyp probes and --read-values: GDB's VBAR_EL2.
    vbar_el2_gdb: int | None = None
    l1_ready_s: float | None = None
    ground_truth_s: float | None = None
    stops_at_ground_truth: int | None = None
    qmp_events: dict[str, int] | None = None

    def to_meta(self) -> dict[str, Any]:
        keys = (
            "qemu_version",
            "cpus",
            "mi_roundtrip_ms",
            "ready_s",
            "hyp_va_delta",
            "vbar_el2",
            "vbar_el2_gdb",
            "l1_ready_s",
            "ground_truth_s",
            "stops_at_ground_truth",
            "qmp_events",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def probe_meta(probes: ResolvedProbeSet) -> list[dict[str, Any]]:
    """meta.json's ``"probes"`` (read back by pipeline.remerge as ProbeInfo)."""
    return [p.info().to_json() for p in probes.probes]


def initial_meta(
    opts: RecordOptions, assets: GuestAssets, res: Resolution, argv: list[str], host_el: int
) -> dict[str, Any]:
    """What is known before QEMU starts."""
    req = opts.request
    probes = res.probes
    return {
        "scenario": req.scenario.name,
        "count": req.count,
        "vcpus": req.vcpus,
        "machine": opts.profile.name,
        "kvm_mode": opts.profile.kvm_mode,
        "kernel_release": assets.kernel_release,
        "kernel_version": assets.kernel_version,
        "qemu_argv": argv,
        "timebase": "instructions (icount shift=0): 1 insn = 1 ns",
        "icount": opts.profile.icount,
        "probes": probe_meta(probes),
        "probes_skipped": [list(x) for x in probes.skipped],
        "host_el": host_el,
        "probe_set": res.probe_set_name,
        "kernel_family": assets.kernel_family,
        "read_values": opts.read_values,
        "plugin_values": opts.plugin_values,
        "workload_sources": dict(opts.workload_sources),
        # function+offset of every probe, for `tracekit explain`
        "probe_locations": {p.name: p.location for p in probes.probes},
        # file:line of those locations when `guest build --debug-info` cached them
        "probe_lines": res.probe_lines,
        # The exit code of __guest_enter's early return (model/context.py).
        "irq_exit_code": res.probe_set.decoder.code("IRQ"),
    }


def final_meta(
    initial: dict[str, Any],
    facts: RunFacts,
    stats: LiveStats,
    probes: ResolvedProbeSet,
    *,
    ended_by: str,
    incomplete: str | None,
    ground_truth: dict[str, Any] | None,
) -> dict[str, Any]:
    """The metadata the merge reads (probes at their final, relocated addresses)."""
    meta = {**initial, **facts.to_meta()}
    meta["ended_by"] = ended_by
    meta["incomplete_reason"] = incomplete
    meta["ground_truth"] = ground_truth
    meta["wall_s"] = round(stats.elapsed, 3)
    meta["stops"] = stats.stops
    meta["discarded_non_host"] = stats.discarded
    meta["probes"] = probe_meta(probes)
    return meta


def merge_meta(mstats: MergeStats) -> dict[str, Any]:
    return {
        "events": mstats.events,
        "gdb_hits": mstats.gdb_hits,
        "hits_without_timing": mstats.hits_without_timing,
        "stop_timings_without_hit": mstats.stop_timings_without_hit,
        "unknown_pcs": mstats.unknown_pcs,
        "exceptions_paired": mstats.exceptions_paired,
        "exceptions_unpaired": mstats.exceptions_unpaired,
        "pointers_attached": mstats.pointers_attached,
        "pointers_orphaned": mstats.pointers_orphaned,
        "pointers_agreed": mstats.pointers_agreed,
        "pointers_disagreed": mstats.pointers_disagreed,
        "inference": mstats.inference,
        "disagreements": mstats.disagreements,
        "gic_events": mstats.log.gic_events,
        "debug_stops": mstats.log.debug_stops,
        "debug_paused_s": round(mstats.log.debug_paused_s, 4),
        "untimed_gic": mstats.log.untimed_gic,
        "end_t": mstats.log.end_t,
        "unattributed_vcpu": mstats.log.unattributed_vcpu,
        "per_probe": mstats.per_probe,
        "plugin_values_missing": mstats.plugin_values_missing,
        "plugin_values_used": mstats.plugin_values_used,
        "plugin_values_unreadable": mstats.plugin_values_unreadable,
        "plugin_checks": dict(sorted(mstats.plugin_checks.items())),
        "plugin_disagreements": mstats.plugin_disagreements,
        "plugin_value_lines": mstats.log.value_lines,
        "plugin_orphan_value_lines": mstats.log.orphan_value_lines,
    }

"""The recording's ``meta.json``: what it was asked, what it saw, how it ended.

The metadata is a :class:`~tracekit.model.meta.RecordingMeta` (typed, frozen; it writes
``meta.json`` with the keys a recording always wrote, in their order). Values learnt
while running go into :class:`RunFacts` (mutable, written by the step that learns them)
and into the metadata once, at the end, by name: a new fact is a field here and a field
of the same name there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tracekit.guest.assets import GuestAssets
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.meta import MergeReport, RecordingMeta
from tracekit.probes.info import ProbeInfo
from tracekit.probes.resolve import ResolvedProbeSet
from tracekit.record.merge import MergeStats
from tracekit.record.options import LiveStats, RecordOptions
from tracekit.record.resolve import Resolution

__all__ = ["RunFacts", "final_meta", "initial_meta", "merge_meta"]


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

    def values(self) -> dict[str, Any]:
        """Each fact by its name, which is its RecordingMeta field (and meta.json key)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _infos(probes: ResolvedProbeSet) -> tuple[ProbeInfo, ...]:
    """meta.json's ``"probes"`` (what pipeline.remerge merges with)."""
    return tuple(p.info() for p in probes.probes)


def initial_meta(
    opts: RecordOptions, assets: GuestAssets, res: Resolution, argv: list[str], host_el: int
) -> RecordingMeta:
    """What is known before QEMU starts."""
    req = opts.request
    probes = res.probes
    return RecordingMeta(
        scenario=req.scenario.name,
        count=req.count,
        vcpus=req.vcpus,
        machine=opts.profile.name,
        kvm_mode=opts.profile.kvm_mode,
        kernel_release=assets.kernel_release,
        kernel_version=assets.kernel_version,
        qemu_argv=tuple(argv),
        timebase="instructions (icount shift=0): 1 insn = 1 ns",
        icount=opts.profile.icount,
        probes=_infos(probes),
        probes_skipped=tuple(probes.skipped),
        host_el=host_el,
        probe_set=res.probe_set_name,
        kernel_family=assets.kernel_family,
        read_values=opts.read_values,
        plugin_values=opts.plugin_values,
        workload_sources=dict(opts.workload_sources),
        probe_locations={p.name: p.location for p in probes.probes},
        probe_lines=res.probe_lines,
        irq_exit_code=res.probe_set.decoder.code("IRQ"),
    )


def final_meta(
    initial: RecordingMeta,
    facts: RunFacts,
    stats: LiveStats,
    probes: ResolvedProbeSet,
    *,
    ended_by: str,
    incomplete: str | None,
    ground_truth: GroundTruth | None,
) -> RecordingMeta:
    """The metadata the merge reads (probes at their final, relocated addresses)."""
    return dataclasses.replace(
        initial,
        **facts.values(),
        ended_by=ended_by,
        incomplete_reason=incomplete,
        ground_truth=ground_truth,
        wall_s=round(stats.elapsed, 3),
        stops=stats.stops,
        discarded_non_host=stats.discarded,
        probes=_infos(probes),
    )


def merge_meta(mstats: MergeStats) -> MergeReport:
    return MergeReport(
        events=mstats.events,
        gdb_hits=mstats.gdb_hits,
        hits_without_timing=mstats.hits_without_timing,
        stop_timings_without_hit=mstats.stop_timings_without_hit,
        unknown_pcs=mstats.unknown_pcs,
        exceptions_paired=mstats.exceptions_paired,
        exceptions_unpaired=mstats.exceptions_unpaired,
        pointers_attached=mstats.pointers_attached,
        pointers_orphaned=mstats.pointers_orphaned,
        pointers_agreed=mstats.pointers_agreed,
        pointers_disagreed=mstats.pointers_disagreed,
        inference=dict(mstats.inference),
        disagreements=tuple(mstats.disagreements),
        gic_events=mstats.log.gic_events,
        debug_stops=mstats.log.debug_stops,
        debug_paused_s=round(mstats.log.debug_paused_s, 4),
        untimed_gic=mstats.log.untimed_gic,
        end_t=mstats.log.end_t,
        unattributed_vcpu=mstats.log.unattributed_vcpu,
        per_probe=dict(mstats.per_probe),
        plugin_values_missing=mstats.plugin_values_missing,
        plugin_values_used=mstats.plugin_values_used,
        plugin_values_unreadable=mstats.plugin_values_unreadable,
        plugin_checks=dict(sorted(mstats.plugin_checks.items())),
        plugin_disagreements=tuple(mstats.plugin_disagreements),
        plugin_value_lines=mstats.log.value_lines,
        plugin_orphan_value_lines=mstats.log.orphan_value_lines,
    )

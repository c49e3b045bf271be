"""Values the QEMU >= 9.2 plugin read itself (``TKV`` lines, record --plugin-values):
parsing, merging into events, the host/guest decision, and the check against GDB."""

from __future__ import annotations

import pytest

from tracekit.probes.info import ProbeInfo
from tracekit.record.merge import GdbHit, MergeStats, merge
from tracekit.record.qemulog import LogStats, MemoryAccess, ProbeTiming, parse_qemu_log

pytestmark = pytest.mark.unit

HOST = "@cpsr=60402009"  # EL2h (CPSR.M[3:2] = 2): the VHE host
GUEST = "@cpsr=3c5"  # EL1h: the L2 guest
NAMES = ("intid", "target_vcpu", "@cpsr")
QUEUE = ProbeInfo(
    name="q", address=0x10, phase="A", role="queue", mode="timing", plugin_values=NAMES
)


def test_a_values_line_joins_the_timing_it_follows() -> None:
    st = LogStats()
    log = [
        "TKP 0 10 5",
        f"TKV 0 10 5 intid=1b target_vcpu=1 {HOST}",
        "TKP 1 20 6",
        "TKM 1 30 ffff0000",
        "TKV 1 20 6 intid=1",  # not right after its TKP: never joined to it
        "TKP 0 10 7",
        "TKV 0 10 7 intid=? target_vcpu=?r",
    ]
    items = list(parse_qemu_log(log, st))
    assert items == [
        ProbeTiming(0, 0x10, 5, {"intid": 0x1B, "target_vcpu": 1, "@cpsr": 0x60402009}),
        ProbeTiming(1, 0x20, 6),
        MemoryAccess(1, 0x30, 0xFFFF0000),
        ProbeTiming(0, 0x10, 7, {"intid": None, "target_vcpu": None}),
    ]
    assert st.value_lines == 2 and st.orphan_value_lines == 1 and st.probe_lines == 3


def test_a_torn_values_line_is_ignored() -> None:
    st = LogStats()
    items = list(parse_qemu_log(["TKP 0 10 5", "TKV 0 10 5 intid=1b target_v"], st))
    assert items == [ProbeTiming(0, 0x10, 5)] and st.ignored == 1


def test_plugin_values_become_the_events_values_host_only() -> None:
    log = [
        "TKP 0 10 5",
        f"TKV 0 10 5 intid=1b target_vcpu=1 {HOST}",
        "TKP 1 10 6",
        f"TKV 1 10 6 intid=1b target_vcpu=0 {GUEST}",
        "TKP 0 10 7",
        f"TKV 0 10 7 intid=? target_vcpu=0 {HOST}",
        "TKP 0 10 8",  # its values missing
    ]
    st = MergeStats()
    events = merge([], log, [QUEUE], st)
    assert [(e.t, dict(e.values)) for e in events] == [
        (5, {"intid": 0x1B, "target_vcpu": 1}),
        (7, {"target_vcpu": 0}),  # unreadable: left out, never 0
    ]
    assert st.discarded_non_host == 1
    assert st.plugin_values_used == 3 and st.plugin_values_unreadable == 1
    assert st.plugin_values_missing == 1
    assert st.plugin_checks == {} and st.gdb_hits == 0


def test_nvhe_host_is_el1_with_stage_2_off() -> None:
    probe = ProbeInfo(
        name="q",
        address=0x10,
        phase="A",
        role="queue",
        mode="timing",
        plugin_values=("intid", "@cpsr", "@hcr"),
    )
    log = [
        "TKP 0 10 5",
        "TKV 0 10 5 intid=1 @cpsr=3c5 @hcr=80000000",  # EL1, HCR_EL2.VM = 0: the host
        "TKP 0 10 6",
        "TKV 0 10 6 intid=2 @cpsr=3c5 @hcr=80000001",  # stage 2 on: the L2 guest
    ]
    st = MergeStats()
    events = merge([], log, [probe], st, kvm_mode="nvhe")
    assert [dict(e.values) for e in events] == [{"intid": 1}]
    assert st.discarded_non_host == 1


def test_frame_sources_come_from_plugin_read_frames_too() -> None:
    probe = ProbeInfo(
        name="q",
        address=0x10,
        phase="A",
        role="queue",
        mode="timing",
        plugin_values=("ret1", "@cpsr"),
    )
    source = ProbeInfo(
        name="src",
        address=0x100,
        phase="A",
        role="source_timer",
        mode="timing",
        code=(0x100, 0x200),
    )
    log = ["TKP 0 10 5", f"TKV 0 10 5 ret1=180 {HOST}"]
    events = merge([], log, [probe, source], MergeStats())
    assert events[0].values == {"ret1": 0x180, "src.src": 1}


def test_with_gdb_reads_gdb_is_kept_and_every_plugin_value_checked() -> None:
    probe = ProbeInfo(
        name="q", address=0x10, phase="A", role="queue", mode="stop", plugin_values=NAMES
    )
    hits = [
        GdbHit("q", 0, 0x10, {"intid": 0x1B, "target_vcpu": 1}),
        GdbHit("q", 0, 0x10, {"intid": 0x1C, "target_vcpu": 0}),
        GdbHit("q", 0, 0x10, {}),  # GDB could not read this one
    ]
    log = [
        "TKP 0 10 5",
        f"TKV 0 10 5 intid=1b target_vcpu=1 {HOST}",
        "TKP 0 10 6",
        f"TKV 0 10 6 intid=1c target_vcpu=? {HOST}",
        "TKP 0 10 7",
        f"TKV 0 10 7 intid=1 target_vcpu=1 {HOST}",
    ]
    st = MergeStats()
    events = merge(hits, log, [probe], st)
    assert [dict(e.values) for e in events] == [
        {"intid": 0x1B, "target_vcpu": 1},
        {"intid": 0x1C, "target_vcpu": 0},
        {},
    ]
    assert st.plugin_checks == {
        "@host.agreed": 3,
        "intid.agreed": 2,
        "intid.unchecked": 1,
        "target_vcpu.agreed": 1,
        "target_vcpu.disagreed": 1,
        "target_vcpu.unchecked": 1,
    }
    # The first disagreement, named: probe, value, GDB's, the plugin's (None: unreadable), t.
    assert st.plugin_disagreements == [("q", "target_vcpu", 0, None, 6)]
    assert st.plugin_values_used == 0


def test_a_host_decision_that_differs_from_gdbs_is_a_disagreement() -> None:
    probe = ProbeInfo(
        name="q", address=0x10, phase="A", role="queue", mode="stop", plugin_values=NAMES
    )
    hits = [GdbHit("q", 0, 0x10, {"intid": 1}, host=True)]
    log = ["TKP 0 10 5", f"TKV 0 10 5 intid=1 {GUEST}"]
    st = MergeStats()
    merge(hits, log, [probe], st)
    assert st.plugin_checks["@host.disagreed"] == 1
    assert st.plugin_disagreements == [("q", "@host", 1, 0, 5)]


def test_record_fails_naming_the_first_disagreement() -> None:
    from tracekit.cli.record import _check_plugin_values
    from tracekit.errors import GroundTruthError
    from tracekit.model.meta import MergeReport

    agreeing = MergeReport(plugin_checks={"intid.agreed": 3, "@host.agreed": 3})
    _check_plugin_values(agreeing, read_values=True)
    disagreeing = MergeReport(
        plugin_checks={"intid.agreed": 2, "intid.disagreed": 1},
        plugin_disagreements=(("q", "intid", 27, 28, 500),),
    )
    with pytest.raises(GroundTruthError, match=r"intid.disagreed.*first: .*'q', 'intid', 27, 28"):
        _check_plugin_values(disagreeing, read_values=True)
    with pytest.raises(GroundTruthError, match="2 probe timings came without"):
        _check_plugin_values(MergeReport(plugin_values_missing=2), read_values=False)


def test_an_interrupt_nested_between_a_stop_and_its_stamp_keeps_each_hit_with_its_stamp() -> None:
    """Seen in a clean Debian 12 root: kvm_vcpu_kick stops at its patchable entry (vCPU1),
    the recorder resumes past it, QEMU takes the timer IRQ before the next instruction and
    the handler kicks vCPU0 (stop, stamp); then the first kick stamps. Hits A, B; stamps
    B, A. The stamps' PSTATE (IRQs masked in the handler) finds each one's hit."""
    probe = ProbeInfo(
        name="kick",
        address=0x10,
        phase="A",
        role="kick",
        mode="stop",
        plugin_values=("vcpu", "@cpsr"),
    )
    outer, nested = 0x402009, 0x4020C9  # EL2h; DAIF.I|F set inside the IRQ handler
    hits = [
        GdbHit("kick", 0, 0xC, {"vcpu": 1}, cpsr=outer),
        GdbHit("kick", 0, 0xC, {"vcpu": 0}, cpsr=nested),
    ]
    log = [
        "TKP 0 10 5",
        f"TKV 0 10 5 vcpu=0 @cpsr={nested:x}",
        "TKP 0 10 6",
        f"TKV 0 10 6 vcpu=1 @cpsr={outer:x}",
    ]
    st = MergeStats()
    events = merge(hits, log, [probe], st)
    assert [(e.t, dict(e.values)) for e in events] == [(5, {"vcpu": 0}), (6, {"vcpu": 1})]
    assert st.plugin_checks.get("vcpu.disagreed", 0) == 0 and st.plugin_checks["vcpu.agreed"] == 2
    # Without PSTATE on the hits (older recordings) order decides, as before.
    old = [GdbHit("kick", 0, 0xC, {"vcpu": 1}), GdbHit("kick", 0, 0xC, {"vcpu": 0})]
    st = MergeStats()
    merge(old, log, [probe], st)
    assert st.plugin_checks["vcpu.disagreed"] == 2


def test_a_nested_stop_is_paired_by_when_it_stopped_on_any_qemu() -> None:
    """The same nesting on QEMU 7.2, whose plugin reads no PSTATE: each hit carries the
    host time the recorder received its stop, QEMU's log the times of its gdbstub events;
    a stamp belongs to the latest hit already stopped before it (last in, first out)."""
    probe = ProbeInfo(name="kick", address=0x10, phase="A", role="kick", mode="stop")
    hits = [
        GdbHit("kick", 0, 0xC, {"vcpu": 1}, wall=100.10),  # the task's kick (outer)
        GdbHit("kick", 0, 0xC, {"vcpu": 0}, wall=100.30),  # the timer handler's kick
        GdbHit("kick", 0, 0xC, {"vcpu": 1}, wall=100.50),  # a later kick, not nested
    ]
    log = [
        "7@100.000001:gdbstub_hit_break RUN_STATE_DEBUG",
        "7@100.200000:gdbstub_op_continue_cpu Continuing CPU 0",  # outer resumed past entry
        "7@100.250000:gdbstub_hit_break RUN_STATE_DEBUG",  # the IRQ came first: nested stop
        "7@100.400000:gdbstub_op_continue_cpu Continuing CPU 0",
        "TKP 0 10 5",  # the nested kick's stamp
        "TKP 0 10 6",  # then the outer one's
        "7@100.450000:gdbstub_hit_break RUN_STATE_DEBUG",
        "7@100.600000:gdbstub_op_continue_cpu Continuing CPU 0",
        "TKP 0 10 9",
    ]
    events = merge(hits, log, [probe], MergeStats())
    assert [(e.t, dict(e.values)) for e in events] == [
        (5, {"vcpu": 0}),
        (6, {"vcpu": 1}),
        (9, {"vcpu": 1}),
    ]
    # Without the times (recordings before they were kept), order decides, as before.
    old = [GdbHit("kick", 0, 0xC, dict(h.values)) for h in hits]
    events = merge(old, log, [probe], MergeStats())
    assert [dict(e.values)["vcpu"] for e in events] == [1, 0, 1]


def test_a_stamp_of_a_stepped_stop_falls_back_to_order() -> None:
    """A stop the debugger steps over stamps during the step, before any continue: the
    last timestamped line is the stop's own (earlier than the recorder's receipt), so no
    hit counts as stopped and order decides (a step runs with interrupts masked)."""
    probe = ProbeInfo(name="sgi", address=0x20, phase="A", role="sgi", mode="stop")
    hits = [
        GdbHit("sgi", 1, 0x20, {"v": 7}, wall=50.2),
        GdbHit("sgi", 1, 0x20, {"v": 8}, wall=51.2),
    ]
    log = [
        "7@50.100000:gdbstub_hit_break RUN_STATE_DEBUG",
        "TKP 1 20 3",
        "7@50.300000:gdbstub_hit_break RUN_STATE_DEBUG",  # the step's end
        "7@50.400000:gdbstub_op_continue_cpu Continuing CPU 1",
        "7@51.100000:gdbstub_hit_break RUN_STATE_DEBUG",
        "TKP 1 20 4",
    ]
    events = merge(hits, log, [probe], MergeStats())
    assert [dict(e.values)["v"] for e in events] == [7, 8]

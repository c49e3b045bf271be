"""Pure parsers and translators: QEMU log, merge, capture expressions, GDB/MI records."""

from __future__ import annotations

import pytest

from tracekit.errors import ConfigError, DebuggerError
from tracekit.gdb.mi import parse_record
from tracekit.probes.capture import members_of, to_gdb
from tracekit.probes.info import ProbeInfo
from tracekit.record.merge import GdbHit, MergeStats, merge
from tracekit.record.qemulog import GicEvent, LogStats, ProbeTiming, parse_qemu_log

pytestmark = pytest.mark.unit

LOG = """\
TKP 0 ffff800008070750 1000
TKS 1 1500
gicv3_ich_lr_write GICv3 ICH_LR0_EL2 write cpu 0x1 value 0x500000000000001b
1234@1700000000.000001:gicv3_icv_iar_read GICv3 ICV_IAR1 read cpu 0x1 value 0x1b
TKS 0 1600
gicv3_icc_generate_sgi GICv3 CPU i/f 0x0 generating SGI 1 IRM 0 target affinity 0x0xx targetlist 0x2
garbage line
TKP 1 ffff800008071880 2000
TKP zz
TKE 3000
"""


def test_qemu_log_parser() -> None:
    st = LogStats()
    items = list(parse_qemu_log(LOG.splitlines(), st))
    assert items[0] == ProbeTiming(0, 0xFFFF800008070750, 1000)
    lr = items[1]
    assert isinstance(lr, GicEvent) and lr.role == "lr_write" and lr.t == 1500
    assert lr.values["vintid"] == 27 and lr.values["state"] == 1 and lr.values["lr"] == 0
    ack = items[2]
    assert isinstance(ack, GicEvent) and ack.role == "ack" and ack.values["intid"] == 27
    assert ack.t == 1500  # the marker of the ICV_IAR1 access on that CPU
    sgi = items[3]
    assert isinstance(sgi, GicEvent) and sgi.values == {"sgi": 1, "irm": 0, "targetlist": 2}
    assert st.end_t == 3000 and st.ignored == 2 and st.probe_lines == 2


def test_gic_event_without_marker_is_counted_not_guessed() -> None:
    st = LogStats()
    out = list(parse_qemu_log(["gicv3_icv_eoir_write GICv3 ICV_EOIR1 write cpu 0x0 value 0x1"], st))
    assert out == [] and st.untimed_gic == 1


def test_merge_pairs_kth_hit_with_kth_timing_per_cpu_and_pc() -> None:
    probes = [
        ProbeInfo(name="q", address=0x10, phase="A", role="queue", mode="stop"),
        ProbeInfo(name="x", address=0x20, phase="B", role="x", mode="timing"),
    ]
    hits = [
        GdbHit("q", 0, 0x10, {"intid": 1}),
        GdbHit("q", 0, 0x10, {"intid": 2}),
        GdbHit("q", 1, 0x10, {"intid": 3}, host=False),
    ]
    log = ["TKP 0 10 5", "TKP 1 10 6", "TKP 0 20 7", "TKP 0 10 8", "TKP 0 10 9", "TKP 0 30 1"]
    st = MergeStats()
    events = merge(hits, log, probes, st)
    assert [(e.t, e.name, dict(e.values)) for e in events] == [
        (5, "q", {"intid": 1}),
        (7, "x", {}),
        (8, "q", {"intid": 2}),
    ]
    assert st.discarded_non_host == 1
    assert st.stop_timings_without_hit == 1
    assert st.unknown_pcs == 1


def offsets(member: str) -> int:
    return {"vgic_irq.intid": 56, "vgic_irq.target_vcpu": 48, "kvm_vcpu.vcpu_idx": 40}[member]


def test_capture_expressions() -> None:
    assert to_gdb("x1", offsets) == "$x1"
    assert to_gdb("w1", offsets) == "($x1 & 0xffffffff)"
    assert to_gdb("u32 [x1 + vgic_irq.intid]", offsets) == "*(unsigned int *)($x1 + 56)"
    assert to_gdb("u32 [[x1 + vgic_irq.target_vcpu] + kvm_vcpu.vcpu_idx]", offsets) == (
        "*(unsigned int *)(*(unsigned long *)($x1 + 48) + 40)"
    )
    assert members_of("u32 [[x1 + vgic_irq.target_vcpu] + kvm_vcpu.vcpu_idx]") == [
        "vgic_irq.target_vcpu",
        "kvm_vcpu.vcpu_idx",
    ]


@pytest.mark.parametrize(
    "bad", ["u128 [x1]", "u32 x1", "u32 [q7 + a.b]", "u32 [[x1 + a.b]", "u32 [x1 - vgic_irq.intid]"]
)
def test_bad_capture_expressions(bad: str) -> None:
    with pytest.raises(ConfigError):
        to_gdb(bad, offsets)


def test_mi_records() -> None:
    rec = parse_record(
        '*stopped,reason="breakpoint-hit",bkptno="2",thread-id="1",'
        'frame={addr="0xffff800008064520"}'
    )
    assert rec is not None and rec.type == "notify" and rec.message == "stopped"
    assert rec.payload["bkptno"] == "2"
    done = parse_record('1042^done,value="42"')
    assert done is not None and done.token == 1042 and done.payload == {"value": "42"}
    assert parse_record("(gdb)") is None
    # Malformed input is refused as DebuggerError, never read as a (wrong) value:
    # pygdbmi alone reads the first one as value="".
    for bad in ("1^done,value=" + '"' * 3 + "{", "1^done,value={", "^^^", '1^done,value="abc'):
        with pytest.raises(DebuggerError):
            parse_record(bad)


def test_debugger_stops_are_timed_from_qemus_own_trace_events() -> None:
    st = LogStats()
    lines = [
        "99@1700000000.000000:gdbstub_op_continue_cpu Continuing CPU 0",  # the first start
        "99@1700000001.000000:gdbstub_hit_break RUN_STATE_DEBUG",
        "TKP 0 10 5",
        "99@1700000001.004000:gdbstub_op_continue_cpu Continuing CPU 0",
        "99@1700000001.004010:gdbstub_op_continue_cpu Continuing CPU 1",
        "99@1700000002.000000:gdbstub_hit_break RUN_STATE_DEBUG",
        "99@1700000002.002000:gdbstub_op_continue_cpu Continuing CPU 0",
    ]
    items = list(parse_qemu_log(lines, st))
    # The stamp knows the host time of the last timestamped line before it (merge.py).
    assert items == [ProbeTiming(0, 0x10, 5, wall=1700000001.0)]
    assert st.debug_stops == 2 and abs(st.debug_paused_s - 0.006) < 1e-6


def test_plugin_lines_without_the_running_vcpu_are_counted() -> None:
    """QEMU 10.0's plugin falls back to the callback's vCPU index and says how often."""
    st = LogStats()
    list(parse_qemu_log(["TKP 0 ffff800008064520 100", "TKW 7", "TKE 200"], st))
    assert (st.unattributed_vcpu, st.end_t) == (7, 200)

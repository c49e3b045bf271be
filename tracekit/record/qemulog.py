"""Parse QEMU's log (``-D``): the timebase plugin's lines, GICv3 trace events and
exception records (pure).

Under ``-icount`` all vCPUs run round-robin on one thread, so the log is in execution
order: a trace event raised by a GIC system-register access comes right after the plugin's
``TKS`` marker for that access and takes its timestamp. Formats are QEMU 7.2's
``hw/intc/trace-events`` (log backend) and, for ``-d int``, ``arm_log_exception`` /
``arm_cpu_do_interrupt_aarch64`` in target/arm/helper.c: an exception record is written
while the CPU takes the exception, before the first instruction of its vector runs, so it
carries no time of its own (the merge pairs it with the vector's probe timing).
A ``TKV`` line (the values the QEMU >= 9.2 plugin read at a probe) comes right after its
``TKP`` line, from the same write; the parser hands the two out as one timing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from tracekit.model.vocabulary import Role, Value

__all__ = [
    "ExceptionRecord",
    "GicEvent",
    "LogStats",
    "MemoryAccess",
    "ProbeTiming",
    "parse_qemu_log",
]

_PREFIX = re.compile(r"^\d+@(\d+\.\d+):")
_LR_WRITE = re.compile(r"ICH_LR(\d+)_EL2 write cpu 0x([0-9a-f]+) value 0x([0-9a-f]+)")
_IAR = re.compile(r"ICV_IAR(\d) read cpu 0x([0-9a-f]+) value 0x([0-9a-f]+)")
_EOIR = re.compile(r"ICV_EOIR(\d) write cpu 0x([0-9a-f]+) value 0x([0-9a-f]+)")
_SGI = re.compile(
    r"CPU i/f 0x([0-9a-f]+) generating SGI (\d+) IRM (\d+) .*targetlist 0x([0-9a-f]+)"
)
_TAKING = re.compile(r"^Taking exception (\d+) \[([^\]]*)\] on CPU (\d+)")
_FROM_TO = re.compile(r"^\.\.\.from EL(\d) to EL(\d)")
_WITH_ESR = re.compile(r"^\.\.\.with ESR 0x([0-9a-f]+)/0x([0-9a-f]+)")
_WITH_ELR = re.compile(r"^\.\.\.with ELR 0x([0-9a-f]+)")
_TO_PC = re.compile(r"^\.\.\.to EL(\d) PC 0x([0-9a-f]+)")
# Roles and value names as the plain strings events carry (bound once: per log line, an
# enum attribute costs more than the parse, model/vocabulary.py).
_LR_WRITE_ROLE, _ACK_ROLE = Role.LR_WRITE.value, Role.ACK.value
_EOI_ROLE, _SGI_ROLE = Role.EOI.value, Role.SGI_GENERATE.value
_LR, _VALUE, _VINTID, _STATE = (
    Value.LR.value,
    Value.VALUE.value,
    Value.VINTID.value,
    Value.STATE.value,
)
_HW, _GROUP, _INTID = Value.HW.value, Value.GROUP.value, Value.INTID.value
_SGI_NUM, _IRM, _TARGETLIST = Value.SGI.value, Value.IRM.value, Value.TARGETLIST.value


@dataclass(frozen=True)
class ProbeTiming:
    cpu: int
    pc: int
    t: int
    #: The values the plugin read there (``TKV``): name -> value, None where it marked
    #: the value unreadable; None when it read nothing at this probe.
    values: Mapping[str, int | None] | None = None
    #: Host wall time (s) of the last timestamped QEMU line before this stamp (its
    #: gdbstub and GIC trace events): every debugger stop that line's moment follows has
    #: already happened (merge.py pairs a stamp with its stop by it). None: no such line.
    wall: float | None = None


@dataclass(frozen=True)
class _ProbeValues:
    """A ``TKV`` line, before it is joined to the ``TKP`` line it follows."""

    cpu: int
    pc: int
    t: int
    values: Mapping[str, int | None]


@dataclass(frozen=True)
class MemoryAccess:
    """The address a pointer site's load/store touched (``TKM``)."""

    cpu: int
    pc: int
    vaddr: int


@dataclass(frozen=True)
class GicEvent:
    cpu: int
    t: int
    name: str
    role: str
    values: dict[str, int]


@dataclass(frozen=True)
class ExceptionRecord:
    """One exception QEMU took (``-d int``): where from, where to, and its syndrome."""

    cpu: int
    #: QEMU's exception number (target/arm/cpu.h EXCP_*) and its log name.
    excp: int
    name: str
    from_el: int
    to_el: int
    #: The vector address the CPU continued at (VBAR_ELx + entry offset).
    vector_pc: int
    #: ESR_ELx as written for this exception (meaningful for synchronous ones only).
    esr: int | None
    #: ELR_ELx: where the interrupted code resumes.
    elr: int | None


@dataclass
class LogStats:
    lines: int = 0
    probe_lines: int = 0
    gic_events: int = 0
    exceptions: int = 0
    #: Debugger stops QEMU logged (gdbstub_hit_break) and the host seconds the VM stayed
    #: stopped in them (until the next gdbstub_op_continue_cpu).
    debug_stops: int = 0
    debug_paused_s: float = 0.0
    ignored: int = 0
    untimed_gic: int = 0
    #: Plugin lines whose vCPU is QEMU's callback index, not the running vCPU (``TKW``:
    #: the QEMU 10.0 plugin could not look the running vCPU up, tk_timebase.c).
    unattributed_vcpu: int = 0
    #: ``TKV`` lines, and those not right after the ``TKP`` line they name (should be 0).
    value_lines: int = 0
    orphan_value_lines: int = 0
    end_t: int | None = None
    errors: list[str] = field(default_factory=list)


def _lr_values(lr: int, value: int) -> dict[str, int]:
    # ICH_LR<n>_EL2 layout: vINTID [31:0], pINTID [41:32] if HW, priority [55:48],
    # group 60, HW 61, state [63:62] (1 pending, 2 active); arm64 sysreg.h:888-899.
    return {
        _LR: lr,
        _VALUE: value,
        _VINTID: value & 0xFFFFFFFF,
        _STATE: (value >> 62) & 3,
        _HW: (value >> 61) & 1,
    }


def parse_qemu_log(
    lines: Iterable[str],
    stats: LogStats | None = None,
) -> Iterator[ProbeTiming | GicEvent | ExceptionRecord | MemoryAccess]:
    """Yield probe timings (with the plugin's values, if it read any), timed GIC events
    and exception records in log order.

    Never raises on bad lines.
    """
    st = stats if stats is not None else LogStats()
    held: ProbeTiming | None = None  # a timing whose TKV line may come next
    for item in _items(lines, st):
        if isinstance(item, _ProbeValues):
            if held is not None and (held.cpu, held.pc, held.t) == (item.cpu, item.pc, item.t):
                st.value_lines += 1
                yield replace(held, values=item.values)
                held = None
            else:
                st.orphan_value_lines += 1
            continue
        if held is not None:
            yield held
            held = None
        if isinstance(item, ProbeTiming):
            held = item
        else:
            yield item
    if held is not None:
        yield held


def _plugin_value(text: str) -> int | None:
    """One ``TKV`` value: hex, or ``?``/``?r`` (unreadable address / register)."""
    return None if text.startswith("?") else int(text, 16)


def _items(
    lines: Iterable[str], st: LogStats
) -> Iterator[ProbeTiming | _ProbeValues | GicEvent | ExceptionRecord | MemoryAccess]:
    marker: dict[int, int] = {}
    taking: _Taking | None = None
    stopped_at: float | None = None
    wall: float | None = None
    for raw in lines:
        st.lines += 1
        text = raw.strip()
        stamp = _PREFIX.match(text)
        line = text[stamp.end() :] if stamp else text
        if stamp:
            wall = float(stamp.group(1))
        if not line:
            continue
        try:
            if line.startswith("gdbstub_"):
                if stamp and line.startswith("gdbstub_hit_break"):
                    st.debug_stops += 1
                    stopped_at = float(stamp.group(1))
                elif stamp and stopped_at is not None and line.startswith("gdbstub_op_cont"):
                    st.debug_paused_s += float(stamp.group(1)) - stopped_at
                    stopped_at = None
                continue
            if line.startswith("TKP "):
                _, cpu, pc, t = line.split()
                st.probe_lines += 1
                yield ProbeTiming(int(cpu), int(pc, 16), int(t), wall=wall)
            elif line.startswith("TKV "):
                _, cpu, pc, t, *pairs = line.split()
                values = {k: _plugin_value(v) for k, _, v in (p.partition("=") for p in pairs)}
                yield _ProbeValues(int(cpu), int(pc, 16), int(t), values)
            elif line.startswith("TKM "):
                _, cpu, pc, vaddr = line.split()
                yield MemoryAccess(int(cpu), int(pc, 16), int(vaddr, 16))
            elif line.startswith("TKS "):
                _, cpu, t = line.split()
                marker[int(cpu)] = int(t)
            elif line.startswith("TKE "):
                st.end_t = int(line.split()[1])
            elif line.startswith("TKW "):
                st.unattributed_vcpu = int(line.split()[1])
            elif line.startswith("Taking exception ") and (m := _TAKING.match(line)):
                taking = _Taking(int(m.group(3)), int(m.group(1)), m.group(2))
            elif line.startswith("...") and taking is not None:
                record = _exception_line(line, taking)
                if record is not None:
                    taking = None
                    st.exceptions += 1
                    yield record
            elif line.startswith("gicv3_"):
                ev = _gic(line, marker)
                if ev is None:
                    st.ignored += 1
                elif ev.t < 0:
                    st.untimed_gic += 1
                else:
                    st.gic_events += 1
                    yield ev
            else:
                st.ignored += 1
        except ValueError:
            st.ignored += 1
            if len(st.errors) < 5:
                st.errors.append(f"unparsable log line {line[:60]!r}")


@dataclass
class _Taking:
    """An exception record being read, line by line."""

    cpu: int
    excp: int
    name: str
    from_el: int = -1
    esr: int | None = None
    elr: int | None = None


def _exception_line(line: str, taking: _Taking) -> ExceptionRecord | None:
    """Add one ``...`` line to the record being read; the ``...to ELn PC`` line ends it."""
    if m := _FROM_TO.match(line):
        taking.from_el = int(m.group(1))
    elif m := _WITH_ESR.match(line):
        taking.esr = int(m.group(2), 16)
    elif m := _WITH_ELR.match(line):
        taking.elr = int(m.group(1), 16)
    elif m := _TO_PC.match(line):
        return ExceptionRecord(
            taking.cpu,
            taking.excp,
            taking.name,
            taking.from_el,
            int(m.group(1)),
            int(m.group(2), 16),
            taking.esr,
            taking.elr,
        )
    return None


def _gic(line: str, marker: dict[int, int]) -> GicEvent | None:
    """One GICv3 trace event, timed by its CPU's last ``TKS`` marker (-1: none yet)."""
    name = line.split(" ", 1)[0]
    found: tuple[int, str, dict[str, int]] | None = None
    if name == "gicv3_ich_lr_write" and (m := _LR_WRITE.search(line)):
        found = (
            int(m.group(2), 16),
            _LR_WRITE_ROLE,
            _lr_values(int(m.group(1)), int(m.group(3), 16)),
        )
    elif name == "gicv3_icv_iar_read" and (m := _IAR.search(line)):
        found = (
            int(m.group(2), 16),
            _ACK_ROLE,
            {_GROUP: int(m.group(1)), _INTID: int(m.group(3), 16)},
        )
    elif name == "gicv3_icv_eoir_write" and (m := _EOIR.search(line)):
        found = (
            int(m.group(2), 16),
            _EOI_ROLE,
            {_GROUP: int(m.group(1)), _INTID: int(m.group(3), 16)},
        )
    elif name == "gicv3_icc_generate_sgi" and (m := _SGI.search(line)):
        values = {
            _SGI_NUM: int(m.group(2)),
            _IRM: int(m.group(3)),
            _TARGETLIST: int(m.group(4), 16),
        }
        found = int(m.group(1), 16), _SGI_ROLE, values
    if found is None:
        return None
    cpu, role, values = found
    return GicEvent(cpu, marker.get(cpu, -1), name, role, values)

"""Merge GDB breakpoint hits and the QEMU log into one ordered raw event stream (pure).

Every probe PC is timestamped by the plugin (``TKP``). For ``stop`` probes GDB also
reported the hit with the values it read; the k-th GDB hit of a PC on a CPU is the k-th
plugin timing of that PC on that CPU (the breakpoint stops the CPU before the instruction;
GDB's step over it then executes it, and the instruction count does not advance while the
VM is stopped). A probe that resumes past its patchable entry (``skip_entry``) is
stamped at the next instruction, which runs right after the stop. Unmatched items on
either side are counted, never silently dropped.

An exception record (QEMU ``-d int``) whose vector address is a probe's is paired with
that CPU's next probe timing, which must be that very vector entry (the CPU executes it
right after taking the exception): the probe event then carries the exception's
syndrome (``esr``), return address (``elr``) and QEMU exception number (``excp``).

With ``record --plugin-values`` (QEMU >= 9.2) the plugin read a probe's captures itself
and wrote them with its timing (``TKV``): such a probe's values come from there, host and
guest told apart by the ``@cpsr``/``@hcr`` it read (world.py), as for a GDB hit. Where GDB
also stopped (``--read-values``) GDB's values are kept and every plugin-read value is
compared with them (``plugin_checks``, like the inference counts of model/context.py).
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracekit.model.events import RawEvent
from tracekit.model.vocabulary import RETURN_ADDRESSES, SOURCE_MARK, Value
from tracekit.probes.info import ProbeInfo
from tracekit.record.qemulog import (
    ExceptionRecord,
    GicEvent,
    LogStats,
    MemoryAccess,
    parse_qemu_log,
)
from tracekit.record.world import world

__all__ = ["GdbHit", "MergeStats", "merge"]


@dataclass(frozen=True)
class GdbHit:
    """One breakpoint hit as the recorder wrote it to hits.jsonl."""

    probe: str
    cpu: int
    pc: int
    values: Mapping[str, int]
    #: False when the hit was not in L1-host context (wrong exception level): discarded.
    host: bool = True
    #: PSTATE at the stop (recordings before it was kept: None).
    cpsr: int | None = None
    #: Host wall time (s) at which the recorder received the stop (older recordings: None).
    wall: float | None = None

    @classmethod
    def from_json(cls, line: str) -> GdbHit:
        d: dict[str, Any] = json.loads(line)
        values = {k: int(v) for k, v in d.get("values", {}).items() if v is not None}
        cpsr, wall = d.get("cpsr"), d.get("wall")
        return cls(
            str(d["probe"]), int(d["cpu"]), int(d["pc"]), values, bool(d.get("host", True)),
            int(cpsr) if cpsr is not None else None,
            float(wall) if wall is not None else None,
        )  # fmt: skip


@dataclass
class MergeStats:
    log: LogStats = field(default_factory=LogStats)
    events: int = 0
    gdb_hits: int = 0
    hits_without_timing: int = 0
    stop_timings_without_hit: int = 0
    unknown_pcs: int = 0
    discarded_non_host: int = 0
    #: Exception records paired with their vector's probe timing, and those whose vector
    #: probe did not come next on that CPU (should be 0).
    exceptions_paired: int = 0
    exceptions_unpaired: int = 0
    #: Pointer-site accesses attached to their probe's event; those with no event of
    #: the probe before them on that CPU; and, where the value was also read by a
    #: stop (--read-values), how often the two agreed and disagreed.
    pointers_attached: int = 0
    pointers_orphaned: int = 0
    pointers_agreed: int = 0
    pointers_disagreed: int = 0
    per_probe: dict[str, int] = field(default_factory=dict)
    #: Value inference (tracekit/model/context.py), filled by the pipeline.
    inference: dict[str, int] = field(default_factory=dict)
    #: A few (probe, value, read, inferred, t) where a read value contradicted inference.
    disagreements: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    #: --plugin-values: timings of probes the plugin reads that came without its values
    #: (should be 0); plugin-read values used as the event's, and those it marked
    #: unreadable (left out of the event, never 0).
    plugin_values_missing: int = 0
    plugin_values_used: int = 0
    plugin_values_unreadable: int = 0
    #: ``VALUE.agreed|disagreed|unchecked`` -> count, where GDB read the same probe too
    #: (``@host``: the host/guest decision); unchecked: GDB could not read it.
    plugin_checks: dict[str, int] = field(default_factory=dict)
    #: A few (probe, value, GDB's, the plugin's (None: unreadable), t) that disagreed.
    plugin_disagreements: list[tuple[str, str, int, int | None, int]] = field(default_factory=list)


def merge(
    hits: Iterable[GdbHit],
    log_lines: Iterable[str],
    probes: Iterable[ProbeInfo],
    stats: MergeStats | None = None,
    kvm_mode: str = "vhe",
) -> list[RawEvent]:
    st = stats if stats is not None else MergeStats()
    probes_list = list(probes)
    by_pc = {p.address: p for p in probes_list}
    # Keyed by probe name: a probe that resumes past its entry is stamped at pc + 4.
    pending: dict[tuple[int, str], deque[GdbHit]] = defaultdict(deque)
    for hit in hits:
        st.gdb_hits += 1
        pending[(hit.cpu, hit.probe)].append(hit)
    events: list[RawEvent] = []
    exception: dict[int, ExceptionRecord] = {}
    sites = {pc: (p, value, off) for p in probes_list for value, pc, off in p.pointers}
    #: (cpu, probe name) -> index in ``events`` of that probe's latest event there.
    latest: dict[tuple[int, str], int] = {}
    #: (event index, value) pairs a pointer site already gave (a store pair may be
    #: reported as two accesses; the first, lower one is the site's).
    given: set[tuple[int, str]] = set()
    functions = sorted((p.code[0], p.code[1], p.name) for p in probes_list if p.code)
    for item in parse_qemu_log(log_lines, st.log):
        if isinstance(item, GicEvent):
            events.append(RawEvent(item.t, item.cpu, "gic", item.name, item.role, "", item.values))
            continue
        if isinstance(item, ExceptionRecord):
            if item.vector_pc in by_pc:
                exception[item.cpu] = item
            continue
        if isinstance(item, MemoryAccess):
            _attach_pointer(item, sites, latest, events, st, given)
            continue
        probe = by_pc.get(item.pc)
        taken = exception.pop(item.cpu, None)
        if taken is not None and taken.vector_pc != item.pc:
            st.exceptions_unpaired += 1
            taken = None
        if probe is None:
            st.unknown_pcs += 1
            continue
        values: Mapping[str, int] = dict(probe.implies)
        if taken is not None:
            st.exceptions_paired += 1
            values = {**values, **_exception_values(taken)}
        plugin = item.values if probe.plugin_values else None
        if probe.plugin_values and plugin is None:
            st.plugin_values_missing += 1
        if probe.mode == "stop":
            queue = pending.get((item.cpu, probe.name))
            if not queue:
                st.stop_timings_without_hit += 1
                continue
            hit = _take_hit(queue, plugin, item.wall)
            if plugin is not None:
                _check_plugin(probe.name, hit, plugin, _plugin_host(plugin, kvm_mode), item.t, st)
            if not hit.host:
                st.discarded_non_host += 1
                continue
            values = {**values, **hit.values}
        elif probe.plugin_values:
            if plugin is None:
                continue  # counted: its values are not there to be used
            if not _plugin_host(plugin, kvm_mode):
                st.discarded_non_host += 1
                continue
            read = {k: v for k, v in plugin.items() if not k.startswith("@") and v is not None}
            st.plugin_values_used += len(read)
            st.plugin_values_unreadable += sum(
                v is None for k, v in plugin.items() if not k.startswith("@")
            )
            values = {**values, **read}
        if functions and _RET[0] in values:
            values = {**values, **_frame_sources(values, functions)}
        st.per_probe[probe.name] = st.per_probe.get(probe.name, 0) + 1
        if probe.pointers:
            latest[(item.cpu, probe.name)] = len(events)
        events.append(
            RawEvent(item.t, item.cpu, "probe", probe.name, probe.role, probe.phase, values)
        )
    st.hits_without_timing = sum(len(q) for q in pending.values())
    # Stable sort: equal timestamps keep log order (the execution order).
    events.sort(key=lambda e: e.t)
    st.events = len(events)
    return events


#: How many queued hits of one probe on one CPU a stamp may be matched against.
_NESTING = 3


def _take_hit(
    queue: deque[GdbHit], plugin: Mapping[str, int | None] | None, now: float | None = None
) -> GdbHit:
    """The GDB hit that belongs to this stamp: the k-th hit of a probe on a CPU is its
    k-th stamp, except when an interrupt nests between them. A probe whose stop is at the
    patchable entry and whose stamp is the instruction after it (``skip_entry``: the
    recorder resumes past the entry) leaves a window: QEMU takes a pending IRQ before the
    next translation block, and an IRQ handler that calls the same function (a kick from
    the timer's handler inside a kick from an ioctl) stops and stamps in between: hits
    A, B but stamps B, A.

    Nesting is last in, first out, so the stamp belongs to the *latest* hit that had
    already stopped when the stamp ran. ``now`` tells which had: the host time of the
    last timestamped QEMU line before the stamp, which follows every stop's own
    ``gdbstub_op_continue_cpu`` (the recorder receives a stop, hence stamps ``wall``, before
    it resumes the VM). That works on every QEMU. Without those times (recordings before
    they were kept), the plugin's PSTATE at the stamp (``--plugin-values``: DAIF differs
    inside the handler) picks the hit with the same PSTATE; without either, order decides.
    """
    if now is not None and queue[0].wall is not None:
        stopped = 0
        for i in range(min(_NESTING, len(queue))):
            wall = queue[i].wall
            if wall is None or wall > now:
                break
            stopped = i + 1
        if stopped > 1:
            hit = queue[stopped - 1]
            del queue[stopped - 1]
            return hit
        if stopped == 1:
            return queue.popleft()
    cpsr = plugin.get("@cpsr") if plugin is not None else None
    if cpsr is not None and queue[0].cpsr is not None and queue[0].cpsr != cpsr:
        for i in range(1, min(_NESTING, len(queue))):
            if queue[i].cpsr == cpsr:
                hit = queue[i]
                del queue[i]
                return hit
    return queue.popleft()


def _plugin_host(values: Mapping[str, int | None], kvm_mode: str) -> bool:
    """Whether the plugin read its values in L1-host context (as stops.py decides it for
    a GDB hit, from CPSR's exception level and, for nVHE, HCR_EL2)."""
    cpsr = values.get("@cpsr")
    el = (cpsr >> 2) & 3 if cpsr is not None else -1
    return world(el, values.get("@hcr"), kvm_mode) == "l1-host"


def _check_plugin(
    probe: str,
    hit: GdbHit,
    plugin: Mapping[str, int | None],
    plugin_host: bool,
    t: int,
    st: MergeStats,
) -> None:
    """Compare every value the plugin read at a probe with GDB's read of the same hit."""
    checks = st.plugin_checks
    pairs: list[tuple[str, int | None, int | None]] = [("@host", int(hit.host), int(plugin_host))]
    pairs += [(k, hit.values.get(k), v) for k, v in plugin.items() if not k.startswith("@")]
    for name, gdb, mine in pairs:
        if gdb is None:
            checks[f"{name}.unchecked"] = checks.get(f"{name}.unchecked", 0) + 1
        elif gdb == mine:
            checks[f"{name}.agreed"] = checks.get(f"{name}.agreed", 0) + 1
        else:
            checks[f"{name}.disagreed"] = checks.get(f"{name}.disagreed", 0) + 1
            if len(st.plugin_disagreements) < 10:
                st.plugin_disagreements.append((probe, name, gdb, mine, t))


def _attach_pointer(
    access: MemoryAccess,
    sites: Mapping[int, tuple[ProbeInfo, str, int]],
    latest: Mapping[tuple[int, str], int],
    events: list[RawEvent],
    st: MergeStats,
    given: set[tuple[int, str]],
) -> None:
    """Give the access's pointer value to the latest event of its probe on that CPU.

    The site is in the probe's straight-line prologue, so that event is the call the
    access belongs to (the CPU cannot have entered the function again in between).
    """
    site = sites.get(access.pc)
    index = latest.get((access.cpu, site[0].name)) if site else None
    if site is None or index is None:
        st.pointers_orphaned += 1
        return
    _, value, offset = site
    if (index, value) in given:
        return  # the second half of a store pair: the site's value is the first access
    given.add((index, value))
    pointer = (access.vaddr - offset) & 0xFFFFFFFFFFFFFFFF
    ev = events[index]
    read = ev.values.get(value)
    if read is not None:
        st.pointers_agreed += read == pointer
        st.pointers_disagreed += read != pointer
        return
    st.pointers_attached += 1
    events[index] = RawEvent(
        ev.t, ev.cpu, ev.source, ev.name, ev.role, ev.phase, {**ev.values, value: pointer}
    )


#: The return addresses of a queue's call stack the probe set captures (ret1 .. ret6), as
#: the plain strings events carry (model/vocabulary.py).
_RET = tuple(v.value for v in RETURN_ADDRESSES)
_EXCP, _ESR, _ELR = Value.EXCP.value, Value.ESR.value, Value.ELR.value


def strip_pac(address: int) -> int:
    """A kernel return address without its pointer-authentication code.

    A return address saved in a frame record was signed by ``paciasp``: the PAC sits in
    the bits above the virtual-address size. Kernel text addresses have all of bits 63:48
    set (arm64 memory layout, for 48- and 52-bit VAs alike), so setting them strips the
    PAC of a kernel (bit 55 set) address.
    """
    return address | 0xFFFF000000000000 if address >> 55 & 1 else address


def _frame_sources(
    values: Mapping[str, int], functions: list[tuple[int, int, str]]
) -> dict[str, int]:
    """``src.<probe> = k`` for each captured frame k whose return address lies in the
    function of a ``frame`` probe: the queue was called, k frames up, from that function.
    """
    import bisect

    out: dict[str, int] = {}
    starts = [f[0] for f in functions]
    for k, name in enumerate(_RET, 1):
        ret = values.get(name)
        if ret is None:
            break
        addr = strip_pac(ret)
        i = bisect.bisect_right(starts, addr) - 1
        # A return address points after the call, so it is never a function's own entry.
        if i >= 0 and functions[i][0] < addr < functions[i][1]:
            out.setdefault(f"{SOURCE_MARK}{functions[i][2]}", k)
    return out


def _exception_values(rec: ExceptionRecord) -> dict[str, int]:
    values = {_EXCP: rec.excp}
    if rec.esr is not None:
        values[_ESR] = rec.esr
    if rec.elr is not None:
        values[_ELR] = rec.elr
    return values

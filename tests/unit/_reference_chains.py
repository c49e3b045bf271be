"""Test oracle: the batch reconstruction as it was before the streaming builder (kept verbatim
so tests can check that ``tracekit.model.incremental`` gives exactly the same chains).

Phase reconstruction: raw events -> exits, entries and A–F interrupt chains (pure).

Correlation rules (docs/phases.md):

* Per L1 CPU the run loop alternates *exits* (hyp vector -> ``__guest_exit`` -> back in
  ``kvm_arch_vcpu_ioctl_run`` -> ``handle_exit``) and *entries* (``kvm_vgic_flush_hwstate``
  -> list-register writes -> ``kvm_arm_vcpu_enter_exit`` -> ``eret``).
* An interrupt instance is anchored on the L2 guest's acknowledgement (QEMU's
  ``gicv3_icv_iar_read``): the k-th acknowledgement of INTID i on vCPU v pairs with the
  first ``vgic_queue_irq_unlock`` that made (i, v) pending after the (k-1)-th one.
* A: from the source probe (timer handler, irqfd wakeup, KVM_IRQ_LINE, or for an SGI the
  sender's trap) to ``kvm_vcpu_kick`` of v. E: the entry of v whose list registers first
  carry i as pending after A; F: that entry's ``enter`` -> ``eret``. B, C, D: the last exit of
  v before that entry (for a vCPU halted in WFI, the WFI exit it is woken from).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tracekit.model.events import RawEvent
from tracekit.probes.spec import ExitDecoder

__all__ = [
    "CLASSES",
    "PHASES",
    "Ack",
    "Chain",
    "Entry",
    "Exit",
    "Reconstruction",
    "Span",
    "reconstruct",
]

PHASES = ("A", "B", "C", "D", "E", "F")
CLASSES = ("hardware", "virtual", "ipi")

SOURCE_LABELS = {
    "source_timer": "arch timer",
    "source_irqfd": "irqfd (KVM_IRQFD)",
    "source_irq_line": "KVM_IRQ_LINE",
    "source_sgi": "SGI (ICC_SGI1R_EL1 trap)",
    "inject": "kvm_vgic_inject_irq",
}
#: ICH_LR state bit 62 = pending (sysreg.h:888-899).
LR_PENDING = 1


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass
class Exit:
    """One guest exit of one L2 vCPU, handled on one L1 CPU (phases B, C, D)."""

    cpu: int
    vcpu: int
    vector_t: int | None = None
    vector: str = ""
    guest_exit_t: int | None = None
    host_resume_t: int | None = None
    handle_exit_t: int | None = None
    d_end: int | None = None
    code: int | None = None
    esr: int | None = None
    handler_probe: str = ""

    @property
    def start(self) -> int | None:
        return next(
            (
                t
                for t in (self.vector_t, self.guest_exit_t, self.host_resume_t, self.handle_exit_t)
                if t is not None
            ),
            None,
        )

    def spans(self, kvm_mode: str) -> dict[str, Span]:
        out: dict[str, Span] = {}
        b_end = self.host_resume_t if kvm_mode == "vhe" else self.guest_exit_t
        if self.start is not None and b_end is not None:
            out["B"] = Span(self.start, b_end)
        if self.host_resume_t is not None:
            c_start = self.host_resume_t if kvm_mode == "vhe" else self.guest_exit_t
            if c_start is not None:
                out["C"] = Span(c_start, self.host_resume_t)
        if self.handle_exit_t is not None and self.d_end is not None:
            out["D"] = Span(self.handle_exit_t, self.d_end)
        return out


@dataclass
class Entry:
    """One guest entry of one L2 vCPU on one L1 CPU (phases E, F)."""

    cpu: int
    vcpu: int
    flush_t: int
    enter_t: int | None = None
    eret_t: int | None = None
    #: (t, lr index, vINTID, state, hw) of each ICH_LR write during this entry.
    lr_writes: list[tuple[int, int, int, int, int]] = field(default_factory=list)

    def lrs_in_use(self) -> int:
        return sum(1 for w in self.lr_writes if w[3] != 0)


@dataclass(frozen=True)
class Ack:
    t: int
    cpu: int
    vcpu: int
    intid: int


@dataclass
class Chain:
    """One interrupt instance, from its source to the guest's acknowledgement."""

    id: int
    cls: str
    intid: int
    vcpu: int
    source: str
    source_cpu: int | None
    phases: dict[str, Span]
    ack: Ack
    exit: Exit | None = None
    entry: Entry | None = None
    lr: int | None = None
    hw: int | None = None
    sender_vcpu: int | None = None
    sgi1r: int | None = None
    #: Why the delivering exit happened (IRQ, WFx, SYS64, ...).
    exit_reason: str = ""

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if p not in self.phases)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class Reconstruction:
    chains: list[Chain]
    exits: list[Exit]
    entries: list[Entry]
    acks: list[Ack]
    kvm_mode: str
    #: Acknowledged INTIDs that matched no pending injection.
    unmatched_acks: int = 0


def _v(ev: RawEvent, key: str) -> int | None:
    return ev.values.get(key)


def _segment(events: Sequence[RawEvent]) -> tuple[list[Exit], list[Entry], list[Ack]]:
    exits: list[Exit] = []
    entries: list[Entry] = []
    acks: list[Ack] = []
    running: dict[int, int] = {}
    pending_vector: dict[int, tuple[int, str]] = {}
    open_exit: dict[int, Exit] = {}
    open_entry: dict[int, Entry] = {}
    for ev in events:
        cpu, role = ev.cpu, ev.role
        if role in ("vector_sync", "vector_irq"):
            pending_vector[cpu] = (ev.t, "sync" if role == "vector_sync" else "irq")
        elif role == "guest_exit":
            vec = pending_vector.pop(cpu, None)
            ex = Exit(cpu, running.get(cpu, -1), guest_exit_t=ev.t)
            if vec is not None:
                ex.vector_t, ex.vector = vec
            exits.append(ex)
            open_exit[cpu] = ex
        elif role == "host_resume":
            ex_open = open_exit.get(cpu)
            if ex_open is None or ex_open.host_resume_t is not None:
                # __guest_enter returned early (interrupt pending): no eret, no exception.
                ex_open = Exit(cpu, running.get(cpu, -1))
                exits.append(ex_open)
                open_exit[cpu] = ex_open
            ex_open.host_resume_t = ev.t
        elif role == "handle_exit":
            ex_open = open_exit.get(cpu)
            if ex_open is None or ex_open.handle_exit_t is not None:
                ex_open = Exit(cpu, -1)
                exits.append(ex_open)
                open_exit[cpu] = ex_open
            ex_open.handle_exit_t = ev.t
            ex_open.code = _v(ev, "exit_code")
            ex_open.esr = _v(ev, "esr")
            vcpu = _v(ev, "vcpu")
            if vcpu is not None:
                ex_open.vcpu = vcpu
        elif role == "exit_handler":
            ex_open = open_exit.get(cpu)
            if (
                ex_open is not None
                and ex_open.handle_exit_t is not None
                and not ex_open.handler_probe
            ):
                ex_open.handler_probe = ev.name
        elif role == "flush":
            ex_open = open_exit.pop(cpu, None)
            if ex_open is not None:
                ex_open.d_end = ev.t
            vcpu = _v(ev, "vcpu")
            ent = Entry(cpu, vcpu if vcpu is not None else -1, ev.t)
            entries.append(ent)
            open_entry[cpu] = ent
        elif role == "enter":
            ent_open = open_entry.get(cpu)
            if ent_open is not None and ent_open.enter_t is None:
                ent_open.enter_t = ev.t
        elif role == "eret":
            ent_open = open_entry.pop(cpu, None)
            if ent_open is not None:
                ent_open.eret_t = ev.t
                running[cpu] = ent_open.vcpu
        elif role == "lr_write":
            ent_open = open_entry.get(cpu)
            if ent_open is not None:
                ent_open.lr_writes.append(
                    (
                        ev.t,
                        ev.values.get("lr", -1),
                        ev.values.get("vintid", -1),
                        ev.values.get("state", 0),
                        ev.values.get("hw", 0),
                    )
                )
        elif role == "ack":
            intid = _v(ev, "intid")
            if intid is not None and intid < 1020:  # 1020..1023 are special/spurious
                acks.append(Ack(ev.t, cpu, running.get(cpu, -1), intid))
    return exits, entries, acks


def _pending(ev: RawEvent) -> bool:
    latch = ev.values.get("pending_latch", 0)
    level = ev.values.get("line_level", 0)
    config = ev.values.get("config", 0)  # enum vgic_irq_config: 0 EDGE, 1 LEVEL
    return bool(latch) or (config == 1 and bool(level))


def reconstruct(
    events: Iterable[RawEvent],
    decoder: ExitDecoder,
    kvm_mode: str = "vhe",
    classes: Mapping[tuple[int, int], str] | None = None,
) -> Reconstruction:
    """Build exits, entries and chains. ``classes`` maps (INTID, vCPU) to a class."""
    evs = sorted(events, key=lambda e: e.t)
    exits, entries, acks = _segment(evs)
    by_cpu: dict[int, list[RawEvent]] = defaultdict(list)
    for ev in evs:
        if ev.source == "probe":
            by_cpu[ev.cpu].append(ev)
    cpu_times = {cpu: [e.t for e in lst] for cpu, lst in by_cpu.items()}
    queues: dict[tuple[int, int], list[RawEvent]] = defaultdict(list)
    for ev in evs:
        if ev.role == "queue" and _pending(ev):
            intid, vcpu = _v(ev, "intid"), _v(ev, "target_vcpu")
            if intid is not None and vcpu is not None:
                queues[(intid, vcpu)].append(ev)
    exits_by_vcpu: dict[int, list[Exit]] = defaultdict(list)
    for ex in exits:
        exits_by_vcpu[ex.vcpu].append(ex)
    entries_by_vcpu: dict[int, list[Entry]] = defaultdict(list)
    for ent in entries:
        entries_by_vcpu[ent.vcpu].append(ent)
    acks_by_key: dict[tuple[int, int], list[Ack]] = defaultdict(list)
    for ack in acks:
        acks_by_key[(ack.intid, ack.vcpu)].append(ack)

    index = _Index(exits, exits_by_vcpu, entries_by_vcpu)
    chains: list[Chain] = []
    unmatched = 0
    for key in sorted(acks_by_key):
        intid, vcpu = key
        prev_t = -1
        qlist = queues.get(key, [])
        qi = 0
        for ack in acks_by_key[key]:
            while qi < len(qlist) and qlist[qi].t <= prev_t:
                qi += 1
            q = qlist[qi] if qi < len(qlist) and qlist[qi].t < ack.t else None
            prev_t = ack.t
            chain = _build_chain(
                len(chains),
                intid,
                vcpu,
                ack,
                q,
                by_cpu,
                cpu_times,
                index,
                decoder,
                kvm_mode,
                classes,
            )
            if q is None:
                unmatched += 1
            chains.append(chain)
    chains.sort(
        key=lambda c: (min((s.start for s in c.phases.values()), default=c.ack.t), c.ack.t, c.intid)
    )
    for i, c in enumerate(chains):
        c.id = i
    return Reconstruction(chains, exits, entries, acks, kvm_mode, unmatched)


def _classify(
    intid: int,
    vcpu: int,
    source_role: str,
    hw: int | None,
    classes: Mapping[tuple[int, int], str] | None,
) -> str:
    if classes and (intid, vcpu) in classes:
        return classes[(intid, vcpu)]
    if intid < 16:
        return "ipi"
    if source_role == "source_timer" or hw:
        return "hardware"
    return "virtual"


class _Index:
    """Sorted views for O(log n) lookups while building chains."""

    def __init__(
        self,
        exits: Sequence[Exit],
        exits_by_vcpu: Mapping[int, list[Exit]],
        entries_by_vcpu: Mapping[int, list[Entry]],
    ) -> None:
        by_cpu: dict[int, list[Exit]] = defaultdict(list)
        for ex in exits:
            if ex.start is not None:
                by_cpu[ex.cpu].append(ex)
        self.exits_by_cpu = {
            c: sorted(lst, key=lambda e: e.start or 0) for c, lst in by_cpu.items()
        }
        self.exit_starts = {c: [e.start or 0 for e in lst] for c, lst in self.exits_by_cpu.items()}
        # Real exits only: an entry abandoned by __guest_enter's early return (no eret)
        # also reaches handle_exit, but the vCPU never left a guest it never entered.
        self.handled = {
            v: sorted(
                (e for e in lst if e.handle_exit_t is not None and e.guest_exit_t is not None),
                key=lambda e: e.handle_exit_t or 0,
            )
            for v, lst in exits_by_vcpu.items()
        }
        self.handled_t = {v: [e.handle_exit_t or 0 for e in lst] for v, lst in self.handled.items()}
        self.entries = {
            v: sorted(lst, key=lambda e: e.flush_t) for v, lst in entries_by_vcpu.items()
        }
        self.flush_t = {v: [e.flush_t for e in lst] for v, lst in self.entries.items()}

    def exit_around(self, cpu: int, t: int) -> Exit | None:
        """The exit being handled on ``cpu`` at time ``t`` (its B..D contains t)."""
        starts = self.exit_starts.get(cpu, [])
        i = bisect.bisect_right(starts, t) - 1
        if i < 0:
            return None
        ex = self.exits_by_cpu[cpu][i]
        return ex if ex.d_end is None or ex.d_end >= t else None

    def last_exit_before(self, vcpu: int, t: int) -> Exit | None:
        times = self.handled_t.get(vcpu, [])
        i = bisect.bisect_left(times, t) - 1
        return self.handled[vcpu][i] if i >= 0 else None

    def entries_from(self, vcpu: int, t: int) -> list[Entry]:
        """Entries of ``vcpu`` from the last one flushed before ``t`` onwards."""
        times = self.flush_t.get(vcpu, [])
        i = max(0, bisect.bisect_left(times, t) - 1)
        return self.entries.get(vcpu, [])[i:]


def _build_chain(
    cid: int,
    intid: int,
    vcpu: int,
    ack: Ack,
    q: RawEvent | None,
    by_cpu: Mapping[int, list[RawEvent]],
    cpu_times: Mapping[int, list[int]],
    index: _Index,
    decoder: ExitDecoder,
    kvm_mode: str,
    classes: Mapping[tuple[int, int], str] | None,
) -> Chain:
    phases: dict[str, Span] = {}
    source_role = ""
    source_cpu = None
    sender_vcpu = sgi1r = None
    hw = None
    after = ack.t
    if q is not None:
        source_cpu = q.cpu
        hw = q.values.get("hw")
        after = q.t
        lst = by_cpu[q.cpu]
        i = bisect.bisect_left(cpu_times[q.cpu], q.t)
        a_start = q.t
        # Walk back over the source's own calls (stop at the previous run-loop boundary).
        for ev in (lst[j] for j in range(i - 1, -1, -1)):
            if ev.role in ("queue", "eret", "flush", "guest_exit", "handle_exit"):
                break
            if ev.role.startswith("source_") or ev.role == "inject":
                a_start = ev.t
                if ev.role.startswith("source_") or not source_role:
                    source_role = ev.role
                if ev.role == "source_sgi":
                    sender_vcpu, sgi1r = ev.values.get("vcpu"), ev.values.get("sgi1r")
        a_end = q.t
        for ev in (lst[j] for j in range(i + 1, len(lst))):
            if ev.role == "queue":
                break
            if ev.role == "kick" and ev.values.get("vcpu") == vcpu:
                a_end = ev.t
                break
        if source_role == "source_sgi":
            # The IPI starts when the sender's write to ICC_SGI1R_EL1 traps (its exit).
            trap = index.exit_around(q.cpu, q.t)
            if trap is not None and trap.start is not None:
                a_start = trap.start
        phases["A"] = Span(a_start, a_end)
    cls = _classify(intid, vcpu, source_role, hw, classes)
    entry = None
    lr = None
    candidates = index.entries_from(vcpu, after)
    for pos, ent in enumerate(candidates):
        if ent.flush_t > ack.t:
            break
        hit = next(
            (
                w
                for w in ent.lr_writes
                if w[2] == intid and w[3] & LR_PENDING and after < w[0] < ack.t
            ),
            None,
        )
        if hit is not None:
            entry, lr = ent, hit[1]
            candidates = candidates[pos:]
            break
    exit_ = None
    if entry is not None:
        # The entry that really ran the guest: the run loop may abandon an entry after
        # flushing (a pending request: kvm_vcpu_exit_request, arm.c) and __guest_enter
        # may return early without an eret (an interrupt already pending,
        # entry.S:45-53); it then retries, and the interrupt stays in the list registers.
        delivering = next(
            (
                e
                for e in itertools.takewhile(lambda e: e.flush_t < ack.t, candidates)
                if e.flush_t >= entry.flush_t
                and e.enter_t is not None
                and e.eret_t is not None
                and e.eret_t < ack.t
            ),
            None,
        )
        if delivering is not None and delivering.enter_t is not None:
            phases["E"] = Span(entry.flush_t, delivering.enter_t)
            if delivering.eret_t is not None:
                phases["F"] = Span(delivering.enter_t, delivering.eret_t)
        else:
            end_e = entry.enter_t if entry.enter_t is not None else entry.flush_t
            phases["E"] = Span(entry.flush_t, end_e)
        exit_ = index.last_exit_before(vcpu, entry.flush_t)
        if exit_ is not None:
            phases.update(exit_.spans(kvm_mode))
    reason = ""
    if exit_ is not None:
        name, ec, _ = decoder.describe(exit_.code, exit_.esr)
        reason = ec or name
    return Chain(
        cid,
        cls,
        intid,
        vcpu,
        SOURCE_LABELS.get(source_role, "unknown"),
        source_cpu,
        phases,
        ack,
        exit_,
        entry,
        lr,
        hw,
        sender_vcpu,
        sgi1r,
        reason,
    )

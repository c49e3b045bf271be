"""Phase reconstruction: raw events -> exits, entries and A–F interrupt chains (pure).

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

from dataclasses import dataclass, field

from tracekit.model.vocabulary import FIRST_LPI, KIND_CLASSES, PHASES, UNKNOWN_CLASS, Role

__all__ = [
    "Ack",
    "Chain",
    "Entry",
    "Exit",
    "Reconstruction",
    "Span",
    "Unacked",
    "classify",
]


#: What a source role's function injects from: the *kind* of a chain's source, read off
#: the queue's own call stack (docs/phases.md, "Sources"). Keyed by the roles' plain
#: strings: the model looks events' roles up in it (model/vocabulary.py).
SOURCE_KINDS: dict[str, str] = {
    Role.SOURCE_TIMER.value: "timer",
    Role.SOURCE_IRQFD.value: "irqfd",
    Role.SOURCE_IRQ_LINE.value: "irq_line",
    Role.SOURCE_SGI.value: "sgi",
    Role.SOURCE_MSI.value: "msi",
}
SOURCE_LABELS = {
    "timer": "arch timer",
    "irqfd": "irqfd (KVM_IRQFD)",
    "irq_line": "KVM_IRQ_LINE",
    "sgi": "SGI (ICC_SGI1R_EL1 trap)",
    "msi": "MSI via the ITS",
    "": "source unknown",
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
    #: The CPU that ran handle_exit (another one if the thread migrated after the exit).
    handle_cpu: int | None = None
    #: The CPU whose flush ended D (the vCPU's next entry: another CPU if its thread
    #: slept in the handler and woke elsewhere).
    d_cpu: int | None = None
    #: When this exit's CPU went on with another vCPU while D was still running.
    cpu_taken_t: int | None = None

    @property
    def start(self) -> int | None:
        # The first of these that is known (an if chain: this runs several times per exit).
        if self.vector_t is not None:
            return self.vector_t
        if self.guest_exit_t is not None:
            return self.guest_exit_t
        if self.host_resume_t is not None:
            return self.host_resume_t
        return self.handle_exit_t

    def spans(self, kvm_mode: str) -> dict[str, Span]:
        out: dict[str, Span] = {}
        b_end = self.host_resume_t if kvm_mode == "vhe" else self.guest_exit_t
        start = self.start
        if start is not None and b_end is not None:
            out["B"] = Span(start, b_end)
        if self.host_resume_t is not None:
            c_start = self.host_resume_t if kvm_mode == "vhe" else self.guest_exit_t
            if c_start is not None:
                out["C"] = Span(c_start, self.host_resume_t)
        if self.handle_exit_t is not None and self.d_end is not None:
            out["D"] = Span(self.handle_exit_t, self.d_end)
        return out

    @property
    def d_on_one_cpu(self) -> bool:
        """D ran on the exit's own CPU with nothing else in between (the common case);
        otherwise the vCPU's thread moved or slept and that CPU ran other vCPUs meanwhile."""
        return (
            self.cpu_taken_t is None
            and self.handle_cpu in (None, self.cpu)
            and self.d_cpu in (None, self.cpu)
        )


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
    #: The source's kind (SOURCE_KINDS; "" when unknown) and the function A starts in.
    source_kind: str = ""
    source_function: str = ""
    #: Further queues that made (INTID, vCPU) pending while this chain's queue still was,
    #: before its acknowledgement: the guest acknowledged them once ("merged", a re-queue
    #: or a level interrupt re-asserted before its ack; docs/phases.md).
    merged_queues: int = 0

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if p not in self.phases)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class Unacked:
    """A pending queue no acknowledgement claimed: at the end of the recording, or dropped
    after ``max_pending_ns`` (docs/phases.md, "What a real OS adds")."""

    #: The queue's time (``vgic_queue_irq_unlock``) and the CPU it ran on.
    t: int
    cpu: int
    intid: int
    vcpu: int
    cls: str
    #: The source's kind ("" unknown), its function and label, as a chain's would be.
    source_kind: str = ""
    source_function: str = ""
    source: str = ""
    merged_queues: int = 0


@dataclass
class Reconstruction:
    chains: list[Chain]
    exits: list[Exit]
    entries: list[Entry]
    acks: list[Ack]
    kvm_mode: str
    #: Acknowledged INTIDs that matched no pending injection.
    unmatched_acks: int = 0
    #: Pending injections dropped unacknowledged after ``max_pending_ns`` (incremental.py).
    dropped_pending: int = 0
    #: Every pending queue no acknowledgement claimed (dropped, or open at the end).
    unacknowledged: list[Unacked] = field(default_factory=list)


def classify(intid: int, kind: str) -> str:
    """A chain's class from what the recording saw: its source's kind, else the INTID's
    range when that alone decides (0..15 are SGIs, 8192 and above LPIs, which only the
    ITS makes: MSIs), else ``unknown``. Never from the workload's report, which only
    checks it."""
    if kind:
        return KIND_CLASSES[kind]
    if intid < 16:
        return "ipi"
    if intid >= FIRST_LPI:
        return "msi"
    return UNKNOWN_CLASS

"""A chain's source comes from the queue's own call stack (docs/phases.md, "Sources").

Hand-made event streams: one interrupt delivered the way a recording shows it, with the
source activation (its frame record address) and the queue's frame chain varied to cover
nesting, migration between CPUs and missing evidence.
"""

from __future__ import annotations

import pytest

from tracekit.model.chains import Chain
from tracekit.model.events import RawEvent
from tracekit.model.incremental import reconstruct
from tracekit.probes.pointer import find_frame_site
from tracekit.probes.spec import load_probe_set
from tracekit.record.merge import _frame_sources, strip_pac

pytestmark = pytest.mark.unit

FRAME_A, FRAME_B, FRAME_C = 0xFFFF80000A00FD40, 0xFFFF80000A00FE00, 0xFFFF80000A00FF80


def ev(t: int, cpu: int, name: str, role: str, **values: int) -> RawEvent:
    return RawEvent(t, cpu, "probe", name, role, "", values)


def delivery(intid: int, vcpu: int, cpu: int, t: int) -> list[RawEvent]:
    """Exit, injection into LR0, entry and acknowledgement of ``intid`` on ``vcpu``."""
    return [
        ev(t, cpu, "hyp_vector_irq", "vector_irq"),
        ev(t + 16, cpu, "guest_exit", "guest_exit"),
        ev(t + 180, cpu, "host_resume", "host_resume"),
        ev(t + 300, cpu, "handle_exit", "handle_exit", exit_code=0, esr=0, vcpu=vcpu),
        ev(t + 500, cpu, "kvm_vgic_flush_hwstate", "flush", vcpu=vcpu),
        RawEvent(t + 600, cpu, "gic", "gicv3_ich_lr_write", "lr_write", "",
                 {"lr": 0, "vintid": intid, "state": 1, "hw": 0}),
        ev(t + 900, cpu, "enter_guest", "enter"),
        ev(t + 1100, cpu, "guest_eret", "eret"),
        RawEvent(t + 1200, cpu, "gic", "gicv3_icv_iar_read", "ack", "", {"intid": intid}),
    ]  # fmt: skip


def queue(t: int, cpu: int, intid: int, vcpu: int, frames: dict[str, tuple[int, int]]) -> RawEvent:
    """A pending queue whose k-th frame lies in probe ``name`` at frame ``fp``."""
    values = {"intid": intid, "target_vcpu": vcpu, "pending_latch": 1, "config": 0, "hw": 0}
    for name, (k, fp) in frames.items():
        values[f"src.{name}"] = k
        values[f"fp{k}"] = fp
    return ev(t, cpu, "vgic_queue_irq_unlock", "queue", **values)


def one_chain(events: list[RawEvent]) -> Chain:
    recon = reconstruct(events, load_probe_set().decoder, "vhe")
    assert len(recon.chains) == 1
    return recon.chains[0]


def test_the_innermost_source_decides_and_a_starts_at_its_outermost_activation() -> None:
    """A host timer interrupt taken inside a KVM_IRQ_LINE ioctl: the queue is the timer's."""
    events = [
        ev(1000, 1, "kvm_vm_ioctl_irq_line", "source_irq_line", frame=FRAME_C),
        ev(1200, 1, "kvm_arch_timer_handler", "source_timer", frame=FRAME_B),
        ev(1250, 1, "kvm_timer_update_irq", "source_timer", frame=FRAME_A),
        queue(1300, 1, 27, 0, {
            "kvm_timer_update_irq": (2, FRAME_A),
            "kvm_arch_timer_handler": (3, FRAME_B),
            "kvm_vm_ioctl_irq_line": (6, FRAME_C),
        }),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *delivery(27, 0, 0, 2000),
    ]  # fmt: skip
    c = one_chain(events)
    assert (c.cls, c.source_kind, c.source_function) == (
        "hardware",
        "timer",
        "kvm_arch_timer_handler",
    )
    assert c.phases["A"].start == 1200 and c.phases["A"].end == 1400
    assert c.complete


def test_a_source_that_migrated_is_found_on_the_cpu_it_ran() -> None:
    events = [
        ev(1000, 0, "kvm_vm_ioctl_irq_line", "source_irq_line", frame=FRAME_A),
        ev(1100, 1, "kvm_vm_ioctl_irq_line", "source_irq_line", frame=FRAME_B),
        queue(1300, 1, 41, 0, {"kvm_vm_ioctl_irq_line": (2, FRAME_A)}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *delivery(41, 0, 0, 2000),
    ]
    c = one_chain(events)
    assert (c.cls, c.source_kind, c.source_cpu) == ("virtual", "irq_line", 0)
    assert c.phases["A"].start == 1000, "the activation of that frame, not the latest one"


def test_recency_never_decides() -> None:
    """An earlier KVM_IRQ_LINE on the same CPU, then an irqfd: the queue is the irqfd's."""
    events = [
        ev(900, 1, "kvm_vm_ioctl_irq_line", "source_irq_line", frame=FRAME_A),
        ev(1100, 1, "irqfd_wakeup", "source_irqfd", frame=FRAME_B),
        queue(1300, 1, 40, 1, {"irqfd_wakeup": (3, FRAME_B)}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=1),
        *delivery(40, 1, 0, 2000),
    ]
    c = one_chain(events)
    assert (c.source_kind, c.source_function, c.phases["A"].start) == (
        "irqfd",
        "irqfd_wakeup",
        1100,
    )


@pytest.mark.parametrize(
    ("intid", "cls"), [(41, "unknown"), (27, "unknown"), (3, "ipi")], ids=["spi", "ppi", "sgi"]
)
def test_missing_evidence_leaves_the_source_unknown(intid: int, cls: str) -> None:
    events = [
        # The frame on the stack has no recorded activation (a stale one has another frame).
        ev(1000, 1, "kvm_vm_ioctl_irq_line", "source_irq_line", frame=FRAME_B),
        queue(1300, 1, intid, 0, {"kvm_vm_ioctl_irq_line": (2, FRAME_A)}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *delivery(intid, 0, 0, 2000),
    ]
    c = one_chain(events)
    assert (c.cls, c.source, c.source_kind) == (cls, "source unknown", "")
    assert c.phases["A"].start == 1300, "A starts at the queue: nothing earlier is known"


def test_a_queue_without_a_source_function_on_its_stack() -> None:
    """E.g. the guest enabling an interrupt that was already pending (vgic_mmio_write_senable)."""
    events = [queue(1300, 1, 41, 0, {}), *delivery(41, 0, 0, 2000)]
    builder_chain = one_chain(events)
    assert builder_chain.source_kind == "" and builder_chain.cls == "unknown"


def test_sgi_source_carries_sender_and_target_list() -> None:
    events = [
        ev(1000, 0, "vgic_v3_dispatch_sgi", "source_sgi", frame=FRAME_A, vcpu=0, sgi1r=0x1000002),
        queue(1100, 0, 1, 1, {"vgic_v3_dispatch_sgi": (1, FRAME_A)}),
        ev(1200, 0, "kvm_vcpu_kick", "kick", vcpu=1),
        *delivery(1, 1, 1, 2000),
    ]
    c = one_chain(events)
    assert (c.cls, c.source_kind, c.sender_vcpu, c.sgi1r) == ("ipi", "sgi", 0, 0x1000002)


def test_strip_pac() -> None:
    assert strip_pac(0x12BD80000806452C) == 0xFFFF80000806452C  # bit 55 set: a kernel address
    assert strip_pac(0xFFFF80000806452C) == 0xFFFF80000806452C
    assert strip_pac(0x0000AAAAD0001234) == 0x0000AAAAD0001234  # a user address is left alone


def test_frame_sources_from_signed_return_addresses() -> None:
    functions = [(0xFFFF800008064000, 0xFFFF800008064200, "irqfd_wakeup"),
                 (0xFFFF800008070000, 0xFFFF800008070100, "kvm_vm_ioctl_irq_line")]  # fmt: skip
    values = {
        "ret1": 0xFFFF800008071234,  # unsigned (x30 at entry), not a source
        "ret2": 0x00FF800008064110,  # PAC-signed, inside irqfd_wakeup
        "ret3": 0xFFFF800008070000,  # a function's own entry is never a return address
    }
    assert _frame_sources(values, functions) == {"src.irqfd_wakeup": 2}


PACIASP, BTI_C, NOP = 0xD503233F, 0xD503245F, 0xD503201F
STP_PRE = 0xA9BD7BFD  # stp x29, x30, [sp, #-48]!
SUB_SP = 0xD10103FF  # sub sp, sp, #0x40
STP_OFF = 0xA9027BFD  # stp x29, x30, [sp, #32]
STP_X19 = 0xA9BE53F3  # stp x19, x20, [sp, #-32]!
BL = 0x94000010


@pytest.mark.parametrize(
    ("prologue", "site"),
    [
        ([BTI_C, NOP, NOP, PACIASP, STP_PRE], 16),
        ([PACIASP, SUB_SP, STP_OFF], 8),
        ([STP_X19, STP_PRE], 4),
    ],
)
def test_frame_site_is_the_frame_record_store(prologue: list[int], site: int) -> None:
    base = 0x1000
    code = dict(enumerate(prologue))
    got = find_frame_site(lambda a: (code.get((a - base) // 4, NOP),), base, "t")
    assert (got.pc, got.offset) == (base + site, 0)


def test_no_frame_site_before_a_branch() -> None:
    from tracekit.errors import SymbolError

    code = [PACIASP, BL, STP_PRE]
    with pytest.raises(SymbolError, match="no frame record store"):
        find_frame_site(lambda a: (code[(a - 0x1000) // 4] if a < 0x100C else NOP,), 0x1000, "t")


def test_an_exit_handled_on_another_cpu_keeps_its_d() -> None:
    """The vCPU thread was preempted after its exit on CPU1 and ran handle_exit on CPU0
    (preemption is enabled between the world switch and handle_exit in arm.c)."""
    events = [
        ev(500, 1, "guest_eret", "eret"),  # vCPU1 runs on CPU1 ...
        ev(400, 1, "kvm_vgic_flush_hwstate", "flush", vcpu=1),
        ev(1000, 1, "hyp_vector_irq", "vector_irq"),  # ... and exits there
        ev(1016, 1, "guest_exit", "guest_exit"),
        ev(1180, 1, "host_resume", "host_resume"),
        ev(1500, 1, "irqfd_wakeup", "source_irqfd", frame=FRAME_A),  # the VMM thread, CPU1
        queue(1700, 1, 40, 1, {"irqfd_wakeup": (3, FRAME_A)}),
        ev(1800, 1, "kvm_vcpu_kick", "kick", vcpu=1),
        ev(3000, 0, "handle_exit", "handle_exit", exit_code=0, esr=0, vcpu=1),  # on CPU0
        ev(3200, 0, "kvm_vgic_flush_hwstate", "flush", vcpu=1),
        RawEvent(3300, 0, "gic", "gicv3_ich_lr_write", "lr_write", "",
                 {"lr": 0, "vintid": 40, "state": 1, "hw": 0}),
        ev(3500, 0, "enter_guest", "enter"),
        ev(3700, 0, "guest_eret", "eret"),
        RawEvent(3800, 0, "gic", "gicv3_icv_iar_read", "ack", "", {"intid": 40}),
    ]  # fmt: skip
    c = one_chain(sorted(events, key=lambda e: e.t))
    assert c.complete, c.missing
    assert (c.phases["B"].start, c.phases["D"].start, c.phases["D"].end) == (1000, 3000, 3200)
    assert c.exit is not None and c.exit.cpu == 1 and c.exit.vcpu == 1

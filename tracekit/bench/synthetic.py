"""Synthetic raw events shaped like a real recording (pure), for export benchmarks.

Each cycle is one interrupt delivered to one vCPU the way a recording shows it: a source
and injection on one CPU, then exit (B, C, D), injection into a list register (E), guest
entry (F), acknowledgement and EOI on the target's CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

from tracekit.model.events import RawEvent

__all__ = ["EVENTS_PER_CYCLE", "synthetic_events"]

EVENTS_PER_CYCLE = 17
_SOURCES = (
    ("source_irqfd", "irqfd_wakeup", 40, 1),
    ("source_irq_line", "kvm_vm_ioctl_irq_line", 41, 0),
    ("source_timer", "kvm_arch_timer_handler", 27, 0),
)


def synthetic_events(n: int) -> Iterator[RawEvent]:
    """Yield about ``n`` events (whole cycles), in time order."""
    t = 1_000_000
    cycle = 0
    emitted = 0
    while emitted < n:
        role, name, intid, vcpu = _SOURCES[cycle % len(_SOURCES)]
        cpu = vcpu
        src_cpu = 1 - vcpu
        evs = [
            RawEvent(t, src_cpu, "probe", name, role, "A"),
            RawEvent(t + 20, src_cpu, "probe", "kvm_vgic_inject_irq", "inject", "A"),
            RawEvent(
                t + 200,
                src_cpu,
                "probe",
                "vgic_queue_irq_unlock",
                "queue",
                "A",
                {
                    "intid": intid,
                    "target_vcpu": vcpu,
                    "pending_latch": 1,
                    "line_level": 0,
                    "config": 0,
                    "hw": 0,
                },
            ),
            RawEvent(
                t + 350,
                src_cpu,
                "probe",
                "kvm_vcpu_kick",
                "kick",
                "A",
                {"vcpu": vcpu, "vcpu_mode": 1},
            ),
            RawEvent(t + 900, cpu, "probe", "hyp_vector_irq", "vector_irq", "B"),
            RawEvent(t + 916, cpu, "probe", "guest_exit", "guest_exit", "B"),
            RawEvent(t + 1080, cpu, "probe", "host_resume", "host_resume", "C"),
            RawEvent(
                t + 1200,
                cpu,
                "probe",
                "handle_exit",
                "handle_exit",
                "D",
                {"exit_code": 0, "esr": 0, "vcpu": vcpu},
            ),
            RawEvent(
                t + 1400, cpu, "probe", "kvm_vgic_flush_hwstate", "flush", "E", {"vcpu": vcpu}
            ),
            RawEvent(t + 1520, cpu, "probe", "vgic_v3_populate_lr", "populate_lr", "E"),
            RawEvent(t + 1650, cpu, "probe", "vgic_v3_restore_state", "restore_state", "E"),
            RawEvent(
                t + 1676,
                cpu,
                "gic",
                "gicv3_ich_lr_write",
                "lr_write",
                "",
                {
                    "lr": 0,
                    "vintid": intid,
                    "state": 1,
                    "hw": 0,
                    "value": (1 << 62) | (1 << 60) | intid,
                },
            ),
            RawEvent(t + 1920, cpu, "probe", "enter_guest", "enter", "F"),
            RawEvent(t + 2190, cpu, "probe", "guest_eret", "eret", "F"),
            RawEvent(
                t + 2210, cpu, "gic", "gicv3_icv_iar_read", "ack", "", {"group": 1, "intid": intid}
            ),
            RawEvent(
                t + 2230,
                cpu,
                "gic",
                "gicv3_icv_eoir_write",
                "eoi",
                "",
                {"group": 1, "intid": intid},
            ),
            RawEvent(t + 5000, cpu, "probe", "hyp_vector_sync", "vector_sync", "B"),
        ]
        yield from evs
        emitted += len(evs)
        t += 8000
        cycle += 1

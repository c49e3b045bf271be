"""Synthetic raw events shaped like a real recording (pure), for export benchmarks.

Each cycle is one interrupt delivered to one vCPU the way a recording shows it: a source
and injection on one CPU, then exit (B, C, D), injection into a list register (E), guest
entry (F), acknowledgement and EOI on the target's CPU.

The generator runs inside the timed export benchmark, so it is kept cheap: each source's
cycle is a precomputed template, and events are made by filling a new instance's
``__dict__`` (equal to ``RawEvent(...)``; the frozen dataclass's own ``__init__`` goes
through ``object.__setattr__`` per field, ~3x the cost).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tracekit.model.events import RawEvent

__all__ = ["EVENTS_PER_CYCLE", "synthetic_events"]

EVENTS_PER_CYCLE = 17
CYCLE_NS = 8000
_SOURCES = (
    ("source_irqfd", "irqfd_wakeup", 40, 1),
    ("source_irq_line", "kvm_vm_ioctl_irq_line", 41, 0),
    ("source_timer", "kvm_arch_timer_handler", 27, 0),
)
_FIELDS = ("cpu", "source", "name", "role", "phase", "values")


def _cycle(role: str, name: str, intid: int, vcpu: int) -> list[tuple[int, dict[str, Any]]]:
    """One cycle as (time offset, every field but ``t``)."""
    cpu = vcpu
    src = 1 - vcpu
    # The source's activation records its frame; the queue's call stack (merge.py's
    # ``src.<probe>`` marks) names it two frames up, as in a recording (docs/phases.md).
    frame = 0xFFFF80000A00FD40 + 0x100 * intid
    rows: list[tuple[int, int, str, str, str, str, dict[str, int]]] = [
        (0, src, "probe", name, role, "A", {"frame": frame}),
        (20, src, "probe", "kvm_vgic_inject_irq", "inject", "A", {}),
        (200, src, "probe", "vgic_queue_irq_unlock", "queue", "A", {
            "intid": intid, "target_vcpu": vcpu, "pending_latch": 1, "line_level": 0,
            "config": 0, "hw": 0, "fp1": frame - 0x40, "fp2": frame, f"src.{name}": 2,
        }),
        (350, src, "probe", "kvm_vcpu_kick", "kick", "A", {"vcpu": vcpu, "vcpu_mode": 1}),
        (900, cpu, "probe", "hyp_vector_irq", "vector_irq", "B", {}),
        (916, cpu, "probe", "guest_exit", "guest_exit", "B", {}),
        (1080, cpu, "probe", "host_resume", "host_resume", "C", {}),
        (1200, cpu, "probe", "handle_exit", "handle_exit", "D",
         {"exit_code": 0, "esr": 0, "vcpu": vcpu}),
        (1400, cpu, "probe", "kvm_vgic_flush_hwstate", "flush", "E", {"vcpu": vcpu}),
        (1520, cpu, "probe", "vgic_v3_populate_lr", "populate_lr", "E", {}),
        (1650, cpu, "probe", "vgic_v3_restore_state", "restore_state", "E", {}),
        (1676, cpu, "gic", "gicv3_ich_lr_write", "lr_write", "", {
            "lr": 0, "vintid": intid, "state": 1, "hw": 0,
            "value": (1 << 62) | (1 << 60) | intid,
        }),
        (1920, cpu, "probe", "enter_guest", "enter", "F", {}),
        (2190, cpu, "probe", "guest_eret", "eret", "F", {}),
        (2210, cpu, "gic", "gicv3_icv_iar_read", "ack", "", {"group": 1, "intid": intid}),
        (2230, cpu, "gic", "gicv3_icv_eoir_write", "eoi", "", {"group": 1, "intid": intid}),
        (5000, cpu, "probe", "hyp_vector_sync", "vector_sync", "B", {}),
    ]  # fmt: skip
    return [(row[0], dict(zip(_FIELDS, row[1:], strict=True))) for row in rows]


_TEMPLATES = [_cycle(*s) for s in _SOURCES]


def synthetic_events(n: int) -> Iterator[RawEvent]:
    """Yield about ``n`` events (whole cycles), in time order."""
    new = object.__new__
    t = 1_000_000
    emitted = 0
    cycle = 0
    while emitted < n:
        for dt, fields in _TEMPLATES[cycle % len(_TEMPLATES)]:
            ev = new(RawEvent)
            d = ev.__dict__
            d.update(fields)
            d["t"] = t + dt
            yield ev
        emitted += EVENTS_PER_CYCLE
        t += CYCLE_NS
        cycle += 1

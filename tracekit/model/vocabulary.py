"""The words the model, the probe sets, the exporter and the summary share (pure data).

One definition of each: the mission's phases and interrupt classes, and the class of
each source kind a chain's source can have (docs/phases.md).
"""

from __future__ import annotations

__all__ = ["CLASSES", "GIC_ROLES", "KIND_CLASSES", "PHASES", "PROBE_ROLES", "UNKNOWN_CLASS"]

#: The mission's phases, in order (docs/phases.md).
PHASES = ("A", "B", "C", "D", "E", "F")
#: Interrupt classes of the mission, in display order.
CLASSES = ("hardware", "virtual", "ipi")
#: A chain whose source the recording could not name, and whose INTID does not say.
UNKNOWN_CLASS = "unknown"
#: The mission's class of each source kind (``SOURCE_KINDS`` in model/chains.py).
KIND_CLASSES = {"timer": "hardware", "irqfd": "virtual", "irq_line": "virtual", "sgi": "ipi"}

#: What a probe stands for in the model (``role`` in configs/probes/*.toml); the probe-set
#: loader refuses any other word, so a typo cannot silently drop a probe from the model.
PROBE_ROLES = {
    # A: sources and the queue
    "source_timer": "a timer injection (kvm_arch_timer_handler, kvm_timer_update_irq, ...)",
    "source_irqfd": "an irqfd injection (irqfd_wakeup, irqfd_inject)",
    "source_irq_line": "KVM_IRQ_LINE (kvm_vm_ioctl_irq_line)",
    "source_sgi": "an SGI the guest sent (vgic_v3_dispatch_sgi)",
    "inject": "kvm_vgic_inject_irq",
    "queue": "vgic_queue_irq_unlock: the interrupt becomes pending for a vCPU",
    "kick": "kvm_vcpu_kick",
    "path": "a point on the path, shown as an instant only",
    # B, C, D: the exit
    "vector_sync": "the hyp vector's synchronous entry (a trap)",
    "vector_irq": "the hyp vector's IRQ entry",
    "guest_exit": "__guest_exit",
    "host_resume": "back in the run loop after the world switch",
    "handle_exit": "handle_exit",
    "exit_handler": "the ESR class's handler (kvm_handle_wfx, ...)",
    # E, F: the injection and the entry
    "flush": "kvm_vgic_flush_hwstate",
    "populate_lr": "vgic_v3_populate_lr",
    "restore_state": "__vgic_v3_restore_state",
    "enter": "kvm_arm_vcpu_enter_exit",
    "eret": "the eret into the guest",
    # vCPU residency (model/context.py)
    "vcpu_create": "kvm_arch_vcpu_postcreate",
    "vcpu_load": "kvm_arch_vcpu_load",
    "vcpu_put": "kvm_arch_vcpu_put",
}
#: Roles of QEMU's GIC trace events (record/qemulog.py).
GIC_ROLES = ("lr_write", "ack", "eoi", "sgi_generate")

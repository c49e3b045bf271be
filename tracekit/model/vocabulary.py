"""The words the model, the probe sets, the exporter and the summary share (pure data).

One definition of each: the mission's phases and interrupt classes, the class of each
source kind a chain's source can have (docs/phases.md), the roles an event can play and
the names of the values an event carries.

``Role`` and ``Value`` members are ``str`` (``enum.StrEnum``): equal to, and hashing like,
the plain strings events carry (``RawEvent.role`` and the keys of ``RawEvent.values`` are
read back from JSON as plain ``str``). Code that runs per event binds the plain string
once (``Role.QUEUE.value``): on Python 3.11 an enum attribute lookup goes through
``EnumType.__getattr__`` (~0.3 µs), and a dict or set whose keys are all exact ``str``
keeps CPython's fast string lookup.
"""

from __future__ import annotations

import enum

__all__ = [
    "CLASSES",
    "FIRST_LPI",
    "FRAME_POINTERS",
    "GIC_ROLES",
    "KIND_CLASSES",
    "PHASES",
    "PROBE_ROLES",
    "RETURN_ADDRESSES",
    "SOURCE_MARK",
    "UNKNOWN_CLASS",
    "Role",
    "Value",
]

#: The mission's phases, in order (docs/phases.md).
PHASES = ("A", "B", "C", "D", "E", "F")
#: Interrupt classes of the mission, in display order.
CLASSES = ("hardware", "virtual", "ipi", "msi")
#: A chain whose source the recording could not name, and whose INTID does not say.
UNKNOWN_CLASS = "unknown"
#: The mission's class of each source kind (``SOURCE_KINDS`` in model/chains.py).
KIND_CLASSES = {
    "timer": "hardware",
    "irqfd": "virtual",
    "irq_line": "virtual",
    "sgi": "ipi",
    "msi": "msi",
}
#: The first LPI INTID: only the ITS makes them (GICv3: 1020..1023 are special, 1024..8191
#: reserved), so an LPI's class is ``msi`` whatever its source.
FIRST_LPI = 8192


class _Word(enum.StrEnum):
    """A word of the vocabulary: its string, and what it means (for messages and docs)."""

    _value_: str
    description: str

    def __new__(cls, value: str, description: str = "") -> _Word:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member


class Role(_Word):
    """What an event stands for in the model: a probe's ``role`` (configs/probes/*.toml;
    the probe-set loader refuses any other word, so a typo cannot silently drop a probe
    from the model) or a QEMU GIC trace event's (record/qemulog.py)."""

    # A: sources and the queue
    SOURCE_TIMER = (
        "source_timer",
        "a timer injection (kvm_arch_timer_handler, kvm_timer_update_irq, ...)",
    )
    SOURCE_IRQFD = "source_irqfd", "an irqfd injection (irqfd_wakeup, irqfd_inject)"
    SOURCE_IRQ_LINE = "source_irq_line", "KVM_IRQ_LINE (kvm_vm_ioctl_irq_line)"
    SOURCE_SGI = "source_sgi", "an SGI the guest sent (vgic_v3_dispatch_sgi)"
    SOURCE_MSI = (
        "source_msi",
        "an MSI translated by the virtual ITS"
        " (vgic_its_inject_cached_translation, vgic_its_inject_msi)",
    )
    INJECT = "inject", "kvm_vgic_inject_irq"
    QUEUE = "queue", "vgic_queue_irq_unlock: the interrupt becomes pending for a vCPU"
    KICK = "kick", "kvm_vcpu_kick"
    PATH = "path", "a point on the path, shown as an instant only"
    # B, C, D: the exit
    VECTOR_SYNC = "vector_sync", "the hyp vector's synchronous entry (a trap)"
    VECTOR_IRQ = "vector_irq", "the hyp vector's IRQ entry"
    GUEST_EXIT = "guest_exit", "__guest_exit"
    HOST_RESUME = "host_resume", "back in the run loop after the world switch"
    HANDLE_EXIT = "handle_exit", "handle_exit"
    EXIT_HANDLER = "exit_handler", "the ESR class's handler (kvm_handle_wfx, ...)"
    # E, F: the injection and the entry
    FLUSH = "flush", "kvm_vgic_flush_hwstate"
    POPULATE_LR = "populate_lr", "vgic_v3_populate_lr"
    RESTORE_STATE = "restore_state", "__vgic_v3_restore_state"
    ENTER = "enter", "kvm_arm_vcpu_enter_exit"
    ERET = "eret", "the eret into the guest"
    # vCPU residency (model/context.py)
    VCPU_CREATE = "vcpu_create", "kvm_arch_vcpu_postcreate"
    VCPU_LOAD = "vcpu_load", "kvm_arch_vcpu_load"
    VCPU_PUT = "vcpu_put", "kvm_arch_vcpu_put"
    # QEMU's GICv3 trace events (record/qemulog.py)
    LR_WRITE = "lr_write", "a list-register write (gicv3_ich_lr_write)"
    ACK = "ack", "the guest acknowledges an interrupt (gicv3_icv_iar_read)"
    EOI = "eoi", "the guest ends an interrupt (gicv3_icv_eoir_write)"
    SGI_GENERATE = "sgi_generate", "a CPU interface generates an SGI (gicv3_icc_generate_sgi)"


#: Roles of QEMU's GIC trace events (record/qemulog.py).
GIC_ROLES = (Role.LR_WRITE, Role.ACK, Role.EOI, Role.SGI_GENERATE)
#: Roles a probe of a probe set may have (every other role).
PROBE_ROLES = tuple(r for r in Role if r not in GIC_ROLES)


class Value(_Word):
    """The name of a value an event carries (``RawEvent.values``): captured, inferred,
    implied or recovered from a pointer by a probe (configs/probes/*.toml; the loader
    refuses any other name), or set by the recorder (merge.py) or QEMU's log (qemulog.py).
    """

    # the interrupt (vgic_queue_irq_unlock's struct vgic_irq; ICV_IAR/EOIR)
    INTID = "intid", "the interrupt's INTID"
    TARGET_VCPU = "target_vcpu", "the vCPU an interrupt is queued to (vcpu_idx)"
    PENDING_LATCH = "pending_latch", "vgic_irq.pending_latch"
    LINE_LEVEL = "line_level", "vgic_irq.line_level"
    CONFIG = "config", "vgic_irq.config (enum vgic_irq_config: 0 edge, 1 level)"
    HW = "hw", "a hardware-backed interrupt (vgic_irq.hw; the list register's HW bit)"
    # the vCPU and its exit
    VCPU = "vcpu", "the vCPU an event is about (kvm_vcpu.vcpu_idx)"
    VCPU_PTR = "vcpu_ptr", "the address of the struct kvm_vcpu"
    EXIT_CODE = "exit_code", "the exit code (ARM_EXCEPTION_*)"
    ESR = "esr", "the exception syndrome (ESR_EL2)"
    SGI1R = "sgi1r", "the ICC_SGI1R_EL1 value an SGI's sender wrote"
    # an MSI (struct kvm_msi) and an MMIO abort
    DEVID = "devid", "the MSI's device ID (kvm_msi.devid)"
    EVENTID = "eventid", "the MSI's event ID (kvm_msi.data)"
    FAULT_IPA = "fault_ipa", "the IPA of an MMIO abort (io_mem_abort's fault_ipa)"
    # the queue's call stack (ret<k>/fp<k>: k frames up) and a source's activation
    RET1 = "ret1", "return address 1 frame up"
    RET2 = "ret2", "return address 2 frames up"
    RET3 = "ret3", "return address 3 frames up"
    RET4 = "ret4", "return address 4 frames up"
    RET5 = "ret5", "return address 5 frames up"
    RET6 = "ret6", "return address 6 frames up"
    FP1 = "fp1", "frame record 1 frame up"
    FP2 = "fp2", "frame record 2 frames up"
    FP3 = "fp3", "frame record 3 frames up"
    FP4 = "fp4", "frame record 4 frames up"
    FP5 = "fp5", "frame record 5 frames up"
    FP6 = "fp6", "frame record 6 frames up"
    FRAME = "frame", "the frame record address of a source function's activation"
    # the exception QEMU took (-d int, merge.py)
    EXCP = "excp", "QEMU's exception number (EXCP_*)"
    ELR = "elr", "the exception's return address (ELR_EL2)"
    # QEMU's GICv3 trace events (qemulog.py)
    LR = "lr", "the list register written"
    VALUE = "value", "the list register's new value"
    VINTID = "vintid", "the virtual INTID a list register carries"
    STATE = "state", "a list register's state (1 pending, 2 active, 3 both)"
    GROUP = "group", "the interrupt group of an acknowledgement or EOI"
    SGI = "sgi", "the SGI number generated"
    IRM = "irm", "the SGI's interrupt routing mode"
    TARGETLIST = "targetlist", "the SGI's target list"


#: ``ret<k>`` and ``fp<k>`` for k = 1 .. len: the frames of a queue's call stack a probe
#: set captures (merge.py reads the return addresses, the model the frame records).
RETURN_ADDRESSES = (Value.RET1, Value.RET2, Value.RET3, Value.RET4, Value.RET5, Value.RET6)
FRAME_POINTERS = (Value.FP1, Value.FP2, Value.FP3, Value.FP4, Value.FP5, Value.FP6)
#: ``src.<probe> = k``: the merge's mark that the queue's k-th frame lies in that source
#: probe's function (model/incremental.py reads it).
SOURCE_MARK = "src."

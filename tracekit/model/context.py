"""Value inference: a probe's values from what its L1 CPU did before, without a stop (pure).

A debugger stop costs milliseconds (QEMU 7.2 flushes its whole translation cache on every
breakpoint stop: gdbstub.c, gdb_vm_state_change), so values that follow from context are
inferred instead of read. The probe set names, per probe and value, the rule to use
(``infer.VALUE = RULE`` in configs/probes/*.toml):

``resident_vcpu``
    The vCPU resident on this L1 CPU: set by ``kvm_arch_vcpu_load`` (a stop that reads
    ``vcpu_idx``), cleared by ``kvm_arch_vcpu_put``. They bracket every stretch a vCPU
    runs on a CPU, at KVM_RUN (vcpu_load()/vcpu_put()) and when its thread is preempted
    or migrated (preempt notifiers kvm_sched_in/kvm_sched_out, virt/kvm/kvm_main.c).
``queued_target``
    The target of the ``vgic_queue_irq_unlock`` calls on this CPU since its previous
    kick: the function ends with ``kvm_vcpu_kick(vcpu)`` for the vCPU it queued to
    (arch/arm64/kvm/vgic/vgic.c). When those calls name different vCPUs (an interrupt
    handler queued in the middle of another queue, or a queue that returned without a
    kick), the kick is ambiguous and its vCPU stays unknown rather than guessed.
``vcpu_by_pointer``
    The index of the ``struct kvm_vcpu`` at the event's ``vcpu_ptr`` (recovered
    stop-free, probes/pointer.py), learnt from earlier events that read both (one stop
    per vCPU, at ``kvm_arch_vcpu_postcreate``).
``exit_vector``
    The exit of the event's vCPU: the exit code its last hyp vector entry implies, and
    for a trap the syndrome QEMU reported when it took that exception to EL2 (the value
    ``fixup_guest_exit`` copies to ``vcpu->arch.fault.esr_el2``). Tracked per vCPU, not
    per CPU, because the thread may migrate between the exit and ``handle_exit``
    (preemption is enabled in between, arm.c). A guest entry with no vector after it
    returned early (``__guest_enter`` returns ARM_EXCEPTION_IRQ when an interrupt is
    already pending, hyp/entry.S): its exit code is IRQ and it has no syndrome.

When a value was also read (``record --read-values``), the read value is kept and the
inferred one is compared with it: ``agreed``/``disagreed`` counts prove the rules on a
real recording.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tracekit.model.events import RawEvent
from tracekit.model.vocabulary import Role, Value

__all__ = ["InferenceResult", "infer_values"]

# The roles and value names read per event, as the plain strings events carry: bound
# once (an enum attribute costs more than the rule using it, model/vocabulary.py).
_VCPU_LOAD, _VCPU_PUT, _QUEUE = Role.VCPU_LOAD.value, Role.VCPU_PUT.value, Role.QUEUE.value
_KICK, _ENTER, _VECTOR_SYNC = Role.KICK.value, Role.ENTER.value, Role.VECTOR_SYNC.value
_VCPU, _VCPU_PTR, _TARGET_VCPU = Value.VCPU.value, Value.VCPU_PTR.value, Value.TARGET_VCPU.value
_EXIT_CODE, _ESR = Value.EXIT_CODE.value, Value.ESR.value
VECTOR_ROLES = (_VECTOR_SYNC, Role.VECTOR_IRQ.value)


@dataclass
class InferenceResult:
    events: list[RawEvent]
    #: ``VALUE.inferred|agreed|disagreed|unknown`` -> count.
    stats: Counter[str] = field(default_factory=Counter)
    #: A few disagreements, for the report: (probe, value, read, inferred, t).
    disagreements: list[tuple[str, str, int, int, int]] = field(default_factory=list)


@dataclass
class _State:
    resident: dict[int, int] = field(default_factory=dict)
    #: CPU -> targets of the queues since that CPU's last kick.
    queued: dict[int, set[int]] = field(default_factory=dict)
    #: vCPU -> (exit code, syndrome or None) of its latest exit (or early return).
    exit: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    #: struct kvm_vcpu address -> vcpu_idx, from events that read both.
    vcpu_at: dict[int, int] = field(default_factory=dict)


def infer_values(
    events: Sequence[RawEvent],
    rules: Mapping[str, Mapping[str, str]],
    *,
    irq_exit_code: int | None = None,
) -> InferenceResult:
    """Fill in inferred values, in time order (``events`` sorted by ``t``).

    ``rules``: probe name -> {value name -> rule}. ``irq_exit_code``: the exit code of an
    early return from guest entry (ARM_EXCEPTION_IRQ, from the probe set's exit codes).
    """
    result = InferenceResult([])
    st = _State()
    # The vCPU first: exit_vector looks up the exit of the event's own vCPU.
    ordered = {
        name: sorted(wanted.items(), key=lambda kv: kv[1] == "exit_vector")
        for name, wanted in rules.items()
        if wanted
    }
    for raw in events:
        ev = raw
        if ev.source == "probe":
            ptr, idx = ev.values.get(_VCPU_PTR), ev.values.get(_VCPU)
            if ptr is not None and idx is not None:
                st.vcpu_at[ptr] = idx
            wanted = ordered.get(ev.name)
            if wanted:
                ev = _apply(ev, wanted, st, result)
            _update(ev, st, irq_exit_code)
        result.events.append(ev)
    return result


def _apply(
    ev: RawEvent, wanted: Sequence[tuple[str, str]], st: _State, result: InferenceResult
) -> RawEvent:
    """``wanted``: (value, rule) pairs, exit_vector rules last."""
    values = dict(ev.values)
    for name, rule in wanted:
        guess: int | None
        if rule == "resident_vcpu":
            guess = st.resident.get(ev.cpu)
        elif rule == "vcpu_by_pointer":
            ptr = values.get(_VCPU_PTR)
            guess = st.vcpu_at.get(ptr) if ptr is not None else None
        elif rule == "queued_target":
            targets = st.queued.get(ev.cpu, set())
            guess = next(iter(targets)) if len(targets) == 1 else None
        else:  # exit_vector
            vcpu = values.get(_VCPU)
            code, esr = st.exit.get(vcpu, (None, None)) if vcpu is not None else (None, None)
            guess = code if name == _EXIT_CODE else esr
            if name != _EXIT_CODE and guess is None and code is not None:
                continue  # no syndrome for an IRQ exit: nothing to infer or to check
        read = values.get(name)
        if guess is None:
            result.stats[f"{name}.unknown"] += 1
        elif read is None:
            values[name] = guess
            result.stats[f"{name}.inferred"] += 1
        elif read == guess:
            result.stats[f"{name}.agreed"] += 1
        else:
            result.stats[f"{name}.disagreed"] += 1
            if len(result.disagreements) < 10:
                result.disagreements.append((ev.name, name, read, guess, ev.t))
    if values == ev.values:
        return ev
    return RawEvent(ev.t, ev.cpu, ev.source, ev.name, ev.role, ev.phase, values)


def _update(ev: RawEvent, st: _State, irq_exit_code: int | None) -> None:
    role, cpu = ev.role, ev.cpu
    if role == _VCPU_LOAD:
        vcpu = ev.values.get(_VCPU)
        if vcpu is None:
            st.resident.pop(cpu, None)
        else:
            st.resident[cpu] = vcpu
    elif role == _VCPU_PUT:
        st.resident.pop(cpu, None)
    elif role == _QUEUE:
        target = ev.values.get(_TARGET_VCPU)
        if target is not None:
            st.queued.setdefault(cpu, set()).add(target)
    elif role == _KICK:
        st.queued.pop(cpu, None)
    elif role == _ENTER:
        vcpu = st.resident.get(cpu)
        if vcpu is not None:
            st.exit[vcpu] = (irq_exit_code, None)
    elif role in VECTOR_ROLES:
        vcpu = st.resident.get(cpu)
        if vcpu is not None:
            esr = ev.values.get(_ESR) if role == _VECTOR_SYNC else None
            st.exit[vcpu] = (ev.values.get(_EXIT_CODE), esr)

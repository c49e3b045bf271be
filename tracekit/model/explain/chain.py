"""One chain's walk A to F: a step builder per phase, and :func:`explain_chain`, which runs
them, orders the steps by time and says what the missing phases and the order mean (pure).

Each builder finds its phase's probe hits (or QEMU's GIC events, or the guest's
acknowledgement) inside the phase slice's span, on the L1 CPU that ran it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from tracekit.model.explain.index import PHASE_ORDER, TraceIndex
from tracekit.model.explain.kicks import kick_outcome
from tracekit.model.explain.steps import Explanation, Step, Walk, hex_value
from tracekit.model.trace import Slice

__all__ = ["MISSING_MEANING", "explain_chain"]

#: What a missing phase means for the reader (docs/phases.md).
MISSING_MEANING = {
    "A": "no pending vgic_queue_irq_unlock for this INTID and vCPU was recorded before the"
    " acknowledgement: the source is not in the recording",
    "B": "no guest exit of this vCPU before the injection was recorded",
    "C": "the exit's return to the host kernel was not recorded",
    "D": "handle_exit of that exit was not recorded",
    "E": "no list-register write carrying this INTID as pending was seen",
    "F": "the guest entry that delivered it (enter and eret) was not recorded",
}
_LR_NAME = re.compile(r"^ICH_LR(\d+) <- vINTID (\d+) \((\w[\w+]*)\)$")


def _source_steps(w: Walk, a: Slice, args: Mapping[str, Any], intid: int, vcpu: int) -> None:
    """A: the source, the queue, the kick."""
    index = w.index
    src_cpu = args.get("source_l1_cpu")
    fn = args.get("source_function")
    src = w.first(src_cpu, a.start, a.end, str(fn)) if fn else None
    if fn == "vgic_v3_dispatch_sgi":
        # A starts at the sender's trapping exit (docs/phases.md): show that exit first.
        trap = w.first(src_cpu, a.start, a.start, "hyp_vector*")
        sender = args.get("sender_vcpu")
        w.add(
            "A",
            trap,
            cpu=src_cpu,
            vcpu=sender,
            what=f"vCPU{sender} writes ICC_SGI1R_EL1: it traps to EL2 (sysreg trap, EC 0x18)",
        )
        if src is not None:
            w.add(
                "A",
                src,
                cpu=src_cpu,
                vcpu=sender,
                what=(
                    "kvm_handle_sys_reg -> access_gic_sgi -> vgic_v3_dispatch_sgi:"
                    " ICC_SGI1R_EL1 ="
                    f" {hex_value(src.args.get('sgi1r'))}, SGI {intid} to vCPU{vcpu}"
                ),
            )
    elif src is not None and "devid" in src.args:
        # The ITS translation (docs/phases.md "msi"): which MSI became this LPI, and how.
        path = (
            "fast path, the translation cache"
            if fn == "vgic_its_inject_cached_translation"
            else ("slow path, the ITS tables")
        )
        w.add(
            "A",
            src,
            cpu=src_cpu,
            vcpu=vcpu,
            what=f"{args.get('source')}: {fn} ({path}) translates DeviceID"
            f" {src.args.get('devid')} EventID {src.args.get('eventid')} to LPI {intid}",
        )
    elif src is not None:
        w.add("A", src, cpu=src_cpu, vcpu=vcpu, what=f"{args.get('source')}: {fn} runs")
    else:
        w.add(
            "A",
            None,
            t=a.start,
            cpu=src_cpu,
            vcpu=vcpu,
            function="(source unknown)",
            kind="guest",
            what="the recording could not name what queued it",
        )
    queue: tuple[int, Slice] | None = None
    order = [int(src_cpu)] if src_cpu is not None else []
    for qcpu in [*order, *index.probe]:
        for x in index.window(index.probe.get(qcpu, []), a.start, a.end):
            if x.name == "vgic_queue_irq_unlock" and x.args.get("intid") == intid:
                queue = (qcpu, x)
                break
        if queue:
            break
    inject = w.first(src_cpu, a.start, a.end, "kvm_vgic_inject_irq")
    if inject is not None and fn != "vgic_v3_dispatch_sgi":
        w.add(
            "A",
            inject,
            cpu=src_cpu,
            vcpu=vcpu,
            what=f"kvm_vgic_inject_irq(INTID {intid}) takes the vgic's irq lock",
        )
    if queue is not None:
        q = queue[1].args
        level = "level" if q.get("config") == 1 else "edge"
        pending = (
            "pending"
            if q.get("pending_latch") or (level == "level" and q.get("line_level"))
            else "not pending"
        )
        w.add(
            "A",
            queue[1],
            cpu=queue[0],
            vcpu=vcpu,
            what=(
                f"INTID {intid} ({level}, hw={q.get('hw')}) becomes {pending}"
                f" for vCPU{q.get('target_vcpu')}:"
                " onto its ap_list"
            ),
        )
    kick_cpu = queue[0] if queue else src_cpu
    kick = w.first(kick_cpu, a.end, a.end, "kvm_vcpu_kick")
    if kick is not None:
        outcome = kick_outcome(index, kick_cpu, kick, vcpu)
        w.add("A", kick, cpu=kick_cpu, vcpu=vcpu, what=f"kick vCPU{vcpu}: {outcome.describe()}")


def _exit_steps(w: Walk, ph: Mapping[str, Slice], vcpu: int) -> None:
    """B, C, D: the exit (C and D are shown only with the B they follow)."""
    index = w.index
    b = ph["B"]
    cpu = next(
        (
            c
            for c in index.probe
            if any(
                x.start == b.start and x.name.startswith(("hyp_vector", "guest_exit"))
                for x in index.window(index.probe[c], b.start, b.start)
            )
        ),
        None,
    )
    vec = w.first(cpu, b.start, b.start, "hyp_vector*")
    if vec is not None:
        kind = "IRQ" if "irq" in vec.name else "synchronous exception"
        esr = vec.args.get("esr")
        w.add(
            "B",
            vec,
            cpu=cpu,
            vcpu=vcpu,
            what=(
                f"the guest takes {'an' if kind == 'IRQ' else 'a'} {kind} to EL2 (hyp vector)"
                + (
                    f"; ESR_EL2 {hex_value(esr)} (EC {int(esr) >> 26 & 0x3F:#04x})"
                    if esr is not None and kind != "IRQ"
                    else ""
                )
            ),
        )
    ge = w.first(cpu, b.start, b.end, "guest_exit", "guest_exit_nvhe")
    w.add("B", ge, cpu=cpu, vcpu=vcpu, what="__guest_exit saves the guest's context")
    if "C" in ph:
        c = ph["C"]
        hr = w.first(cpu, c.end, c.end, "host_resume")
        mode = (
            "VHE: no EL change, the host kernel already runs at EL2"
            if c.end == c.start
            else (f"nVHE: EL2 returns to the host kernel at EL1 ({c.end - c.start} ns)")
        )
        w.add("C", hr, cpu=cpu, vcpu=vcpu, what=f"back in kvm_arch_vcpu_ioctl_run ({mode})")
    if "D" in ph:
        d = ph["D"]
        he = w.first(cpu, d.start, d.start, "handle_exit")
        if he is None:
            # The vCPU thread migrated between the world switch and handle_exit.
            for other in index.probe:
                he = w.first(other, d.start, d.start, "handle_exit")
                if he is not None:
                    cpu = other
                    break
        reason = d.name.removeprefix("D handle_exit").strip(" ()")
        code, _, handler_name = reason.partition(" -> ")
        w.add(
            "D",
            he,
            cpu=cpu,
            vcpu=vcpu,
            what=(
                f"exit code {code}: a host interrupt, nothing to emulate; back to the run loop"
                if code == "IRQ"
                else f"exit code TRAP, ESR class {code} -> {handler_name}"
                if handler_name
                else f"exit {reason}"
            ),
        )
        if he is not None:
            handler = w.first(cpu, d.start + 1, d.end, "kvm_handle_*", "handle_hvc", "handle_smc")
            if handler is not None:
                w.add("D", handler, cpu=cpu, vcpu=vcpu, what=f"{handler.name} handles the exit")


def _injection_steps(w: Walk, e: Slice, intid: int, vcpu: int) -> None:
    """E: the flush onto the list registers, and QEMU's view of the list-register write."""
    index = w.index
    cpu = next(
        (
            c
            for c in index.probe
            if any(
                x.name == "kvm_vgic_flush_hwstate"
                for x in index.window(index.probe[c], e.start, e.start)
            )
        ),
        None,
    )
    fl = w.first(cpu, e.start, e.start, "kvm_vgic_flush_hwstate")
    w.add("E", fl, cpu=cpu, vcpu=vcpu, what="kvm_vgic_flush_hwstate walks the vCPU's ap_list")
    lr = next(
        (
            x
            for x in index.window(index.gic.get(cpu, []) if cpu is not None else [], e.start, e.end)
            if (m := _LR_NAME.match(x.name)) and int(m.group(2)) == intid
        ),
        None,
    )
    if lr is not None and (m := _LR_NAME.match(lr.name)):
        w.add(
            "E",
            lr,
            cpu=cpu,
            vcpu=vcpu,
            kind="gic",
            function="ICH_LR write",
            key="lr_write",
            what=f"ICH_LR{m.group(1)}_EL2 <- vINTID {intid}, state {m.group(3)},"
            f" hw={lr.args.get('hw')}"
            f" ({lr.args.get('value')})",
        )


def _entry_steps(w: Walk, f: Slice, vcpu: int) -> None:
    """F: the entry into the guest and the eret that makes the list register live."""
    index = w.index
    cpu = next(
        (
            c
            for c in index.probe
            if any(x.name == "enter_guest" for x in index.window(index.probe[c], f.start, f.start))
        ),
        None,
    )
    w.add(
        "F",
        w.first(cpu, f.start, f.start, "enter_guest"),
        cpu=cpu,
        vcpu=vcpu,
        what="kvm_arm_vcpu_enter_exit: the KVM_RUN loop enters the guest",
    )
    w.add(
        "F",
        w.first(cpu, f.end, f.end, "guest_eret", "guest_eret_nvhe"),
        cpu=cpu,
        vcpu=vcpu,
        what="eret from EL2 into the guest: the list register is live",
    )


def _acknowledgement_step(w: Walk, head: Slice, intid: int, vcpu: int) -> None:
    """The guest's acknowledgement, at the chain's end."""
    ack = next(
        (
            x
            for x in w.index.window(w.index.guest.get(vcpu, []), head.end, head.end)
            if x.name.startswith("acknowledge") and x.args.get("intid") == intid
        ),
        None,
    )
    if ack is not None:
        w.add(
            "ack",
            ack,
            cpu=int(ack.args.get("l1_cpu", -1)),
            vcpu=vcpu,
            kind="guest",
            function="ICV_IAR1_EL1 read",
            key="ack",
            what=f"the L2 guest acknowledges INTID {intid} (its IRQ handler runs)",
        )


def _notes(ph: Mapping[str, Slice], args: Mapping[str, Any], vcpu: int) -> list[str]:
    """What the order of the phases tells."""
    notes = []
    if "A" in ph and "B" in ph and ph["B"].start < ph["A"].start:
        reason = str(args.get("exit_reason") or "")
        if args.get("class") == "hardware" and reason == "IRQ":
            notes.append(
                "B comes before A: the timer's interrupt made the guest exit, and the host's"
                " handler queued it once the host unmasked interrupts after the exit"
            )
        else:
            notes.append(
                f"B comes before A: vCPU{vcpu} had already left the guest ({reason or '?'} exit)"
                " when the source ran, so no exit was needed; the interrupt waited on its"
                " ap_list (the kick left a request) until the next entry, E"
            )
    return notes


def explain_chain(index: TraceIndex, chain_id: int, names: Mapping[str, str]) -> Explanation:
    head, row = index.chains[chain_id], index.rows[chain_id]
    args = head.args
    ph = index.phases.get(chain_id, {})
    intid, vcpu = row.intid, row.vcpu
    w = Walk(index, names)
    if "A" in ph:
        _source_steps(w, ph["A"], args, intid, vcpu)
    if "B" in ph:
        _exit_steps(w, ph, vcpu)
    if "E" in ph:
        _injection_steps(w, ph["E"], intid, vcpu)
    if "F" in ph:
        _entry_steps(w, ph["F"], vcpu)
    _acknowledgement_step(w, head, intid, vcpu)
    w.steps.sort(key=lambda s: (s.t_ns, PHASE_ORDER.find(s.phase) if s.phase in PHASE_ORDER else 9))
    steps = tuple(
        Step(
            **{
                **asdict(s),
                "n": i + 1,
                "dt_ns": None if i == 0 else s.t_ns - w.steps[i - 1].t_ns,
                "values": s.values,
            }
        )
        for i, s in enumerate(w.steps)
    )
    missing = tuple((p, MISSING_MEANING[p]) for p in PHASE_ORDER if p not in ph)
    summary = dict(args) | {
        "id": chain_id,
        "start_ns": min([head.start, *(s.start for s in ph.values())]),
        "ack_ns": head.end,
        "phases": {p: {"start_ns": s.start, "end_ns": s.end} for p, s in sorted(ph.items())},
    }
    return Explanation(summary, steps, missing, tuple(_notes(ph, args, vcpu)))

"""One interrupt's journey, step by step, from a trace read back (pure).

``tracekit explain`` walks one chain A to F the way ``../shared/notes/original-flow.md``
describes the flow, with what the recording saw at each step: the L1 CPU and vCPU, the
time, the kernel function (+ offset) and the values it read or inferred. Everything comes
from the ``.pftrace``: the chain slice and its phase slices (their spans), the probe-hit
instants of each L1 CPU, QEMU's GIC events and the L2 vCPU tracks.

``kicks`` answers the note's open question ("on a single core, what does a kick even
mean?"): for every ``kvm_vcpu_kick``, where the target vCPU was and what the kick did.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tracekit.errors import ConfigError
from tracekit.model.trace import Slice, TraceContent

__all__ = [
    "Explanation",
    "KickOutcome",
    "Step",
    "TraceIndex",
    "explain_chain",
    "kicks",
    "select_chain",
]

PHASE_ORDER = "ABCDEF"
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
#: How long after a kick its reschedule IPI may be generated (kvm_vcpu_kick ->
#: smp_send_reschedule is a few hundred instructions; the window only bounds the search).
KICK_IPI_WINDOW_NS = 5_000
_CPU_TRACK = re.compile(r"^L1 CPU(\d+): probe hits$")
_GIC_TRACK = re.compile(r"^GIC CPU i/f (\d+)$")
_VCPU_TRACK = re.compile(r"^L2 vCPU(\d+)$")
_LR_NAME = re.compile(r"^ICH_LR(\d+) <- vINTID (\d+) \((\w[\w+]*)\)$")
_SGI_NAME = re.compile(r"^SGI (\d+) generated$")
_EXIT_NAME = re.compile(r"^exit vCPU(\d+): (.*)$")


@dataclass(frozen=True)
class Step:
    n: int
    phase: str
    t_ns: int
    #: Since the previous step (None for the first).
    dt_ns: int | None
    l1_cpu: int | None
    vcpu: int | None
    #: Kernel function (a probe), or what QEMU or the guest did.
    function: str
    #: ``function+0x..`` where the recording has it.
    location: str
    #: ``kernel`` (an L1 kernel function), ``gic`` (QEMU's GIC model), ``guest`` (L2).
    kind: str
    what: str
    #: The name in the 32-bit study note, where one exists.
    original: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    #: ``file:line`` in the kernel source (when the recording had debug info).
    source_line: str = ""


@dataclass(frozen=True)
class Explanation:
    chain: Mapping[str, Any]
    steps: tuple[Step, ...]
    #: (phase, what its absence means) for a partial chain.
    missing: tuple[tuple[str, str], ...]
    #: What the order of the steps tells (e.g. the vCPU had left the guest before A).
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": dict(self.chain),
            "steps": [asdict(s) | {"values": dict(s.values)} for s in self.steps],
            "missing": [{"phase": p, "meaning": m} for p, m in self.missing],
            "notes": list(self.notes),
        }


class TraceIndex:
    """The trace's instants by CPU and kind, sorted by time, for quick window queries."""

    def __init__(self, content: TraceContent) -> None:
        self.meta: dict[str, Any] = {}
        self.probe: dict[int, list[Slice]] = defaultdict(list)
        self.gic: dict[int, list[Slice]] = defaultdict(list)
        self.guest: dict[int, list[Slice]] = defaultdict(list)
        self.in_guest: dict[int, list[Slice]] = defaultdict(list)
        #: Each vCPU's exits (L1 CPU track slices, from the exit to the next entry).
        self.exits: dict[int, list[Slice]] = defaultdict(list)
        for inst in content.instants:
            if "tracekit.meta" in inst.args:
                self.meta = json.loads(str(inst.args["tracekit.meta"]))
            elif m := _CPU_TRACK.match(inst.track):
                self.probe[int(m.group(1))].append(inst)
            elif m := _GIC_TRACK.match(inst.track):
                self.gic[int(m.group(1))].append(inst)
            elif m := _VCPU_TRACK.match(inst.track):
                self.guest[int(m.group(1))].append(inst)
        self.chains: dict[int, Slice] = {}
        self.phases: dict[int, dict[str, Slice]] = defaultdict(dict)
        for s in content.slices:
            if (m := _VCPU_TRACK.match(s.track)) and s.name == "in guest":
                self.in_guest[int(m.group(1))].append(s)
            elif (m := _EXIT_NAME.match(s.name)) and _CPU_TRACK.match(s.track + ": probe hits"):
                self.exits[int(m.group(1))].append(s)
            chain = s.args.get("chain")
            if chain is None:
                continue
            if s.depth == 0 and s.name.startswith("INTID "):
                self.chains[int(chain)] = s
            elif s.name[:2] in {f"{p} " for p in PHASE_ORDER}:
                self.phases[int(chain)][s.name[0]] = s
        for lists in (self.probe, self.gic, self.guest, self.in_guest, self.exits):
            for lst in lists.values():
                lst.sort(key=lambda x: x.start)
        self.locations: dict[str, str] = dict(self.meta.get("probe_locations") or {})
        #: location -> file:line (``guest build --debug-info`` before the recording).
        self.lines: dict[str, str] = dict(self.meta.get("probe_lines") or {})

    def window(self, track: Sequence[Slice], start: int, end: int) -> list[Slice]:
        i = bisect.bisect_left(track, start, key=lambda x: x.start)
        j = bisect.bisect_right(track, end, key=lambda x: x.start)
        return list(track[i:j])

    def cpu_at(self, name: str, t: int) -> int | None:
        """The L1 CPU whose probe ``name`` fired at ``t``."""
        for cpu, track in self.probe.items():
            if any(x.name == name for x in self.window(track, t, t)):
                return cpu
        return None

    def halted(self, vcpu: int, t: int) -> bool:
        """Whether ``vcpu`` was in a WFx exit at ``t`` (handle_exit -> kvm_handle_wfx ->
        kvm_vcpu_halt, until its next entry: the exit slice spans the halt)."""
        return any(
            s.start <= t < s.end and "WFx" in s.name
            for s in self.window(self.exits.get(vcpu, []), -1, t)
        )

    def running_on(self, vcpu: int, t: int) -> int | None:
        """The L1 CPU running ``vcpu`` in the guest at ``t`` (None: not in guest mode)."""
        for s in self.window(self.in_guest.get(vcpu, []), -1, t):
            if s.start <= t < s.end:
                return int(s.args.get("l1_cpu", -1))
        return None


def select_chain(
    index: TraceIndex, chain: int | None, cls: str | None, nth: int, intid: int | None
) -> int:
    """The chain a user asked for; a bad choice names what exists (ConfigError, exit 2)."""
    ids = sorted(index.chains)
    if not ids:
        raise ConfigError(
            "the trace has no interrupt chains", hint="record one with `tracekit record`"
        )
    classes = sorted({str(s.args.get("class")) for s in index.chains.values()})
    intids = sorted({int(s.args["intid"]) for s in index.chains.values()})
    listing = f"chains {ids[0]}..{ids[-1]}; classes {', '.join(classes)}"
    if chain is not None:
        if chain not in index.chains:
            raise ConfigError(
                f"no chain {chain} in the trace ({listing})", hint="pick one of those"
            )
        return chain
    pool = ids
    if cls is not None:
        pool = [i for i in ids if index.chains[i].args.get("class") == cls]
        if not pool:
            raise ConfigError(f"no chain of class {cls!r} in the trace ({listing})")
    if intid is not None:
        pool = [i for i in pool if int(index.chains[i].args["intid"]) == intid]
        if not pool:
            raise ConfigError(
                f"no chain for INTID {intid} in the trace (INTIDs {', '.join(map(str, intids))})"
            )
    complete = [i for i in pool if index.chains[i].args.get("complete")] or pool
    if not 1 <= nth <= len(complete):
        raise ConfigError(
            f"--nth {nth} is out of range", hint=f"there are {len(complete)} such chains"
        )
    return complete[nth - 1]


def _hex(v: Any) -> str:
    return f"{int(v) & 0xFFFFFFFFFFFFFFFF:#x}" if isinstance(v, int) else str(v)


class _Walk:
    def __init__(self, index: TraceIndex, names: Mapping[str, str]) -> None:
        self.index = index
        self.names = names
        self.steps: list[Step] = []

    def add(
        self,
        phase: str,
        inst: Slice | None,
        *,
        t: int | None = None,
        cpu: int | None,
        vcpu: int | None,
        kind: str = "kernel",
        what: str,
        function: str | None = None,
        key: str | None = None,
    ) -> None:
        if inst is None and t is None:
            return
        at = inst.start if inst is not None else int(t or 0)
        name = function or (inst.name if inst is not None else "")
        location = self.index.locations.get(name, name) if kind == "kernel" else ""
        prev = self.steps[-1].t_ns if self.steps else None
        values = {k: v for k, v in (inst.args if inst else {}).items() if k != "phase"}
        self.steps.append(
            Step(
                len(self.steps) + 1,
                phase,
                at,
                None if prev is None else at - prev,
                cpu,
                vcpu,
                name,
                location,
                kind,
                what,
                self.names.get(key or name, ""),
                values,
                self.index.lines.get(location, "") if kind == "kernel" else "",
            )
        )

    def first(self, cpu: int | None, start: int, end: int, *names: str) -> Slice | None:
        """The first probe hit on ``cpu`` in [start, end] named one of ``names`` (a name
        ending in ``*`` matches as a prefix)."""
        if cpu is None:
            return None
        exact = {n for n in names if not n.endswith("*")}
        prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
        for x in self.index.window(self.index.probe.get(cpu, []), start, end):
            if x.name in exact or (prefixes and x.name.startswith(prefixes)):
                return x
        return None


def explain_chain(index: TraceIndex, chain_id: int, names: Mapping[str, str]) -> Explanation:
    head = index.chains[chain_id]
    args = head.args
    ph = index.phases.get(chain_id, {})
    intid, vcpu = int(args["intid"]), int(args["vcpu"])
    w = _Walk(index, names)
    # -- A: the source, the queue, the kick
    if "A" in ph:
        a = ph["A"]
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
                        f" {_hex(src.args.get('sgi1r'))}, SGI {intid} to vCPU{vcpu}"
                    ),
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
    # -- B, C, D: the exit
    if "B" in ph:
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
                        f"; ESR_EL2 {_hex(esr)} (EC {int(esr) >> 26 & 0x3F:#04x})"
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
                handler = w.first(
                    cpu, d.start + 1, d.end, "kvm_handle_*", "handle_hvc", "handle_smc"
                )
                if handler is not None:
                    w.add("D", handler, cpu=cpu, vcpu=vcpu, what=f"{handler.name} handles the exit")
    # -- E, F: the injection and the entry
    if "E" in ph:
        e = ph["E"]
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
                for x in index.window(
                    index.gic.get(cpu, []) if cpu is not None else [], e.start, e.end
                )
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
    if "F" in ph:
        f = ph["F"]
        cpu = next(
            (
                c
                for c in index.probe
                if any(
                    x.name == "enter_guest" for x in index.window(index.probe[c], f.start, f.start)
                )
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
    ack = next(
        (
            x
            for x in index.window(index.guest.get(vcpu, []), head.end, head.end)
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
    return Explanation(summary, steps, missing, tuple(notes))


@dataclass(frozen=True)
class KickOutcome:
    #: Where the target vCPU was: ``in guest`` (IN_GUEST_MODE on another L1 CPU), ``halted
    #: in WFI`` (in a WFx exit, kvm_vcpu_halt) or ``in the host`` (between exit and entry).
    target_mode: str
    #: ``IPI sent``, ``wakes it from the halt`` or ``request only``.
    outcome: str
    target_cpu: int | None

    def describe(self) -> str:
        where = (
            f"running in the guest on L1 CPU{self.target_cpu}"
            if self.target_cpu is not None
            else self.target_mode
        )
        return f"the vCPU is {where}: {self.outcome}"


def kick_outcome(index: TraceIndex, cpu: int | None, kick: Slice, vcpu: int) -> KickOutcome:
    """What one kick did (kvm_main.c kvm_vcpu_kick: kvm_vcpu_wake_up, then an IPI only if
    the target is IN_GUEST_MODE on another CPU; otherwise the request is seen before the
    next entry)."""
    target_cpu = index.running_on(vcpu, kick.start)
    if target_cpu is not None and target_cpu != cpu:
        sgis = [
            x
            for x in index.window(
                index.gic.get(cpu, []) if cpu is not None else [],
                kick.start,
                kick.start + KICK_IPI_WINDOW_NS,
            )
            if _SGI_NAME.match(x.name) and int(x.args.get("targetlist", 0)) >> target_cpu & 1
        ]
        return KickOutcome("in guest", "IPI sent" if sgis else "in guest, no IPI seen", target_cpu)
    if index.halted(vcpu, kick.start):
        return KickOutcome("halted in WFI", "wakes it from the halt", None)
    return KickOutcome("in the host", "request only", None)


def kicks(index: TraceIndex) -> dict[str, Any]:
    """Every kick of the recording by the target's mode and the outcome."""
    counts: Counter[tuple[str, str]] = Counter()
    for cpu, track in index.probe.items():
        for x in track:
            if x.name == "kvm_vcpu_kick" and x.args.get("vcpu") is not None:
                o = kick_outcome(index, cpu, x, int(x.args["vcpu"]))
                counts[(o.target_mode, o.outcome)] += 1
    cpus = sorted(index.probe)
    return {
        "l1_cpus": len(cpus),
        "kicks": sum(counts.values()),
        "by_outcome": [
            {"target": m, "outcome": o, "count": n} for (m, o), n in sorted(counts.items())
        ],
        "ipis_sent": sum(n for (_, o), n in counts.items() if o == "IPI sent"),
    }

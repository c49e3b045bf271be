"""What a ``kvm_vcpu_kick`` did, for one kick or every kick of a recording (pure).

This answers the study note's open question ("on a single core, what does a kick even
mean?"): where the target vCPU was when it was kicked and what the kick did.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tracekit.model.explain.index import TraceIndex
from tracekit.model.trace import Slice

__all__ = ["KICK_IPI_WINDOW_NS", "KickOutcome", "kick_outcome", "kicks"]

#: How long after a kick its reschedule IPI may be generated (kvm_vcpu_kick ->
#: smp_send_reschedule is a few hundred instructions; the window only bounds the search).
KICK_IPI_WINDOW_NS = 5_000
_SGI_NAME = re.compile(r"^SGI (\d+) generated$")


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

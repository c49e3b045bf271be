"""Step 3, arm: the debugger attached to the paused VM, breakpoints only at ``stop``
probes (the others are timed by the plugin without stopping).

With ``--plugin-values`` in nVHE the stop probes are stamp-only, but the hyp probes still
wait for the first host stop to learn their EL2 addresses (hyp.py): those probes then get
relocation-only breakpoints, removed at that first stop."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tracekit.probes.resolve import ResolvedProbe, ResolvedProbeSet
from tracekit.record.peers import Debugger
from tracekit.vm.runtime import RuntimeDir

__all__ = ["Armed", "arm", "roundtrip_ms"]


@dataclass(frozen=True)
class Armed:
    #: Breakpoint number -> its probe.
    by_breakpoint: dict[str, ResolvedProbe]
    #: Debugger thread id -> L1 CPU.
    thread_cpu: dict[str, int]
    #: Breakpoints that only wait for the nVHE relocation (removed at the first stop).
    relocation: frozenset[str] = frozenset()


def relocation_probes(probes: ResolvedProbeSet, plugin_values: bool) -> list[ResolvedProbe]:
    """Where to stop once for the nVHE relocation when no probe stops for values: the
    ``stop`` probes the plugin reads instead (the first of them runs after the VMM created
    its VM, when the hyp vectors are in place, as for a recording with stops)."""
    if not plugin_values or not any(p.spec.hyp for p in probes.probes):
        return []
    return [p for p in probes.probes if p.spec.mode == "stop" and not p.stops]


def arm(
    debugger: Debugger,
    runtime: RuntimeDir,
    probes: ResolvedProbeSet,
    relocate_at: list[ResolvedProbe] | None = None,
) -> Armed:
    debugger.attach(runtime.gdb_socket)
    by_breakpoint = {debugger.insert_breakpoint(p.address): p for p in probes.stop_probes()}
    relocation = frozenset(debugger.insert_breakpoint(p.address) for p in relocate_at or ())
    return Armed(by_breakpoint, debugger.threads(), relocation)


def roundtrip_ms(debugger: Debugger, n: int = 30) -> float:
    """A bare debugger round trip to the stopped target: the floor of one stop (ms)."""
    start = time.monotonic()
    for _ in range(n):
        debugger.evaluate("(unsigned long)$pc")
    return round((time.monotonic() - start) * 1000 / n, 3)

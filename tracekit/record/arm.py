"""Step 3, arm: the debugger attached to the paused VM, breakpoints only at probes that
stop (the others are timed by the plugin without stopping; with plugin-read values none
stops unless --read-values asks GDB to check them, and in nVHE the plugin places the hyp
probes itself: hyp.py)."""

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


def arm(debugger: Debugger, runtime: RuntimeDir, probes: ResolvedProbeSet) -> Armed:
    debugger.attach(runtime.gdb_socket)
    by_breakpoint = {debugger.insert_breakpoint(p.address): p for p in probes.stop_probes()}
    return Armed(by_breakpoint, debugger.threads())


def roundtrip_ms(debugger: Debugger, n: int = 30) -> float:
    """A bare debugger round trip to the stopped target: the floor of one stop (ms)."""
    start = time.monotonic()
    for _ in range(n):
        debugger.evaluate("(unsigned long)$pc")
    return round((time.monotonic() - start) * 1000 / n, 3)

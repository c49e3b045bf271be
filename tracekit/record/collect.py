"""Step 5, collect: shut every peer down (always, in order) and keep what the runtime
directory held that the raw directory needs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tracekit.record.metadata import RunFacts
from tracekit.record.peers import Debugger, Monitor, Vm
from tracekit.vm.runtime import RuntimeDir

__all__ = ["keep_console", "teardown"]


def teardown(
    vm: Vm,
    monitor: Monitor | None,
    debugger: Debugger | None,
    facts: RunFacts,
    *,
    hurry: Callable[[], bool],
) -> None:
    """QMP ``quit`` first (QEMU exits in order), then GDB, then QEMU for sure.

    ``hurry`` (a second Ctrl-C, possibly during this) skips the graceful waits; it is asked
    at each step because it can change while they run.
    """
    if hurry():
        vm.stop(grace_s=0.2)
    if monitor is not None and not hurry():
        monitor.quit()
    if debugger is not None:
        debugger.close()
    vm.stop(grace_s=0.2 if hurry() else 5.0)
    if monitor is not None:
        facts.qmp_events = dict(Counter(str(e.get("event")) for e in monitor.events()))
        monitor.close()


def keep_console(runtime: RuntimeDir, raw_dir: Path) -> None:
    """The L1 console goes with the raw files (best effort: the recording is over)."""
    try:
        src = runtime.console_log
        if src.exists():
            (raw_dir / "console.log").write_bytes(src.read_bytes())
    except OSError:
        pass

"""Naming why a recording ended early: QEMU's exit, an L1 panic, GDB losing the target,
a stalled guest (with the CPUs' state saved for the report)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NoReturn

from tracekit.errors import DebuggerError, TracekitError, VMError
from tracekit.record.console import raise_if_panic
from tracekit.record.options import LiveStats
from tracekit.record.peers import Monitor, Vm

__all__ = ["diagnose_stall", "raise_vm_exited"]


def raise_vm_exited(vm: Vm, stats: LiveStats, gdb_lost: str | None = None) -> NoReturn:
    """The run ended before the ground truth: name the cause from QEMU's last output.

    A panicking L1 (panic=-1, -no-reboot) makes QEMU exit; GDB may notice first, and the
    panic message may still sit in the console reader, so read it to the end (or, if QEMU
    is still shutting down, what has arrived) before blaming GDB.
    """
    exited = vm.poll() is not None
    fresh = vm.final_lines() if exited else vm.drain_lines()
    stats.console_tail = [*stats.console_tail, *fresh][-8:]
    for line in [*fresh, *vm.console_tail]:
        raise_if_panic(line)
    if not exited and gdb_lost is not None:
        raise DebuggerError(f"GDB lost the target: {gdb_lost}")
    tail = vm.stderr_tail()
    raise VMError(
        f"QEMU exited (code {vm.poll()}) before the ground truth" + (f": {tail}" if tail else "")
    )


def diagnose_stall(monitor: Monitor, qemu_pid: int | None, gdb: str, raw_dir: Path) -> None:
    """Save where every CPU is (QMP status, HMP registers) for the error report."""
    lines: list[str] = []
    try:
        lines.append(f"status: {monitor.execute('query-status')}")
        regs = monitor.execute("human-monitor-command", {"command-line": "info registers -a"})
        lines.append(str(regs))
    except TracekitError as exc:
        lines.append(f"diagnostics failed: {exc}")
        if qemu_pid is not None:
            # QEMU itself is stuck: record where its threads are, for a bug report.
            bt = subprocess.run(
                [gdb, "-p", str(qemu_pid), "--batch", "-nx", "-ex", "thread apply all bt 25"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            lines.append(bt.stdout[-20000:])
    (raw_dir / "stall.txt").write_text("\n".join(lines) + "\n")

"""Step 4, run: the VM runs until the workload's ground truth (or --duration, Ctrl-C, a
fault). One loop multiplexes the debugger's events, the L1 console and the deadlines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import DebuggerError, VMError
from tracekit.model.ground_truth import GroundTruth
from tracekit.record.console import ConsoleWatcher, Said
from tracekit.record.faults import diagnose_stall, raise_vm_exited
from tracekit.record.metadata import RunFacts
from tracekit.record.options import LiveStats, RecordOptions
from tracekit.record.peers import Debugger, Monitor, StampStream, Vm
from tracekit.record.stops import StopHandler

__all__ = ["RunLoop"]


@dataclass
class _Deadlines:
    boot: float
    run: float | None = None
    done: float | None = None


class RunLoop:
    def __init__(
        self,
        opts: RecordOptions,
        stats: LiveStats,
        facts: RunFacts,
        *,
        raw_dir: Path,
        gdb: str,
        stamps: StampStream,
        stop_requested: Callable[[], bool],
        on_update: Callable[[LiveStats], None],
    ) -> None:
        self._opts = opts
        self._stats = stats
        self._facts = facts
        self._raw_dir = raw_dir
        self._gdb = gdb
        self._stamps = stamps
        self._stop_requested = stop_requested
        self._on_update = on_update

    def _vm_gone(
        self, vm: Vm, console: ConsoleWatcher, *, gdb_lost: str | None = None
    ) -> tuple[GroundTruth | None, str]:
        """QEMU exited (or GDB lost it): its last console lines first, then the cause.

        When L1 prints its last lines and powers off, those lines may still sit in the
        console reader when the exit is noticed (by poll() or by GDB, whichever is
        first): a Linux L2's report, or the line naming its fault (l2console.py). A
        clean Debian 13 root once named such an L2 panic L1's, and a finished L2 "QEMU
        exited before the ground truth".

        :raises TracekitError: the cause, when the lines do not end the recording.
        """
        lines = vm.final_lines() if vm.poll() is not None else vm.drain_lines()
        self._stats.console_tail = [*self._stats.console_tail, *lines][-8:]
        for line in lines:
            console.feed(line)  # may raise: the L2's own failure, an L1 error line
        if console.truth is not None:
            return console.truth, "ground-truth"
        raise_vm_exited(vm, self._stats, gdb_lost=gdb_lost)

    def run(
        self, vm: Vm, debugger: Debugger, monitor: Monitor, stops: StopHandler
    ) -> tuple[GroundTruth | None, str]:
        """Until the recording ends; returns the ground truth (if any) and why it ended.

        :raises TracekitError: a fault ended it (its message is the one-line reason).
        """
        console = ConsoleWatcher(self._opts, self._stats, self._facts)
        profile = self._opts.profile
        deadlines = _Deadlines(time.monotonic() + profile.boot_timeout_s)
        last_progress = time.monotonic()
        last_update = 0.0
        logged = self._stamps.written()
        while True:
            batch_start = time.monotonic()
            try:
                for event in debugger.events(timeout=0.05):
                    last_progress = time.monotonic()
                    lost = stops.handle(event)
                    if lost is not None:
                        if console.truth is not None:
                            return console.truth, "ground-truth"
                        # GDB notices a dead QEMU first; name the real cause when it is that.
                        with contextlib.suppress(VMError):
                            vm.wait(5.0)
                        return self._vm_gone(vm, console, gdb_lost=lost)
                    # A busy guest keeps GDB talking without pause: hand control back to
                    # the rest of the loop (console, Ctrl-C, deadlines) at least every 100 ms.
                    if last_progress - batch_start > 0.1:
                        break
            except DebuggerError:
                # GDB can also simply exit when QEMU dies under it (its remote end closed):
                # when QEMU is gone too, QEMU's exit is the cause to name, not GDB's.
                if console.truth is not None:
                    return console.truth, "ground-truth"
                with contextlib.suppress(VMError):
                    vm.wait(5.0)
                if vm.poll() is not None:
                    return self._vm_gone(vm, console)
                raise
            for line in vm.drain_lines():
                last_progress = time.monotonic()
                said = console.feed(line)
                if said is Said.READY:
                    deadlines.run = time.monotonic() + (
                        self._opts.duration_s or self._opts.request.scenario.timeout_s * 10
                    )
                elif said is Said.GROUND_TRUTH:
                    deadlines.done = time.monotonic() + 60
                    if console.l2 is not None:  # L2's own report, as it came
                        (self._raw_dir / "l2-report.txt").write_text(console.l2.report_text)
                elif said is Said.DONE:
                    return console.truth, "ground-truth"
            now = time.monotonic()
            if self._stop_requested():
                return console.truth, "interrupted"
            if vm.poll() is not None:
                return self._vm_gone(vm, console)
            if deadlines.run is None and now > deadlines.boot:
                raise VMError(f"L1 did not boot within {profile.boot_timeout_s} s")
            if deadlines.run is not None and console.truth is None and now > deadlines.run:
                return None, "duration" if self._opts.duration_s else "timeout"
            if deadlines.done is not None and now > deadlines.done:
                return console.truth, "ground-truth"
            # With no debugger stop (plugin-read values) and a quiet console, the plugin's
            # stamps are what shows the guest is running (one stat() per loop).
            if (written := self._stamps.written()) != logged:
                logged, last_progress = written, now
            # Boot is quiet (the kernel runs with `quiet`) and bounded by boot_timeout_s;
            # the stall watchdog covers the scenario.
            console.check_hang(now)
            stalled = now - last_progress > self._opts.stall_timeout_s
            if deadlines.run is not None and stalled:
                diagnose_stall(monitor, vm.pid, self._gdb, self._raw_dir)
                raise VMError(
                    f"no progress for {self._opts.stall_timeout_s:.0f} s (guest hang?)",
                    hint=f"CPU state saved in {self._raw_dir}/stall.txt",
                )
            if now - last_update > 0.25:
                last_update = now
                self._on_update(self._stats)

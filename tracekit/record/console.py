"""The L1 console protocol: what the guest's init prints, and what each line means to
a recording (guest/runner.py writes the lines)."""

from __future__ import annotations

import enum

from tracekit.errors import VMError
from tracekit.guest.runner import DONE, L1_ERROR, READY, check_ready, parse_ready
from tracekit.model.ground_truth import GROUND_TRUTH_PREFIX, GroundTruth, parse_ground_truth_line
from tracekit.model.l2report import L2Report
from tracekit.model.l2truth import ground_truth_of
from tracekit.record.l2console import L2Console
from tracekit.record.metadata import RunFacts
from tracekit.record.options import LiveStats, RecordOptions

__all__ = ["ConsoleWatcher", "Said", "raise_if_panic"]

#: How the L1 kernel announces its end (panic=-1 and -no-reboot make QEMU exit after it).
PANIC = "Kernel panic"


class Said(enum.Enum):
    READY = "ready"
    GROUND_TRUTH = "ground truth"
    DONE = "done"


def raise_if_panic(line: str) -> None:
    if PANIC in line:
        raise VMError(f"the L1 kernel panicked: {line.strip()[:120]}")


class ConsoleWatcher:
    """Follows the console; keeps the ground truth once the workload printed it."""

    def __init__(self, opts: RecordOptions, stats: LiveStats, facts: RunFacts) -> None:
        self._opts = opts
        self._stats = stats
        self._facts = facts
        self.truth: GroundTruth | None = None
        #: A Linux-L2 scenario's own part of the protocol (None for the VMM's scenarios).
        self.l2 = (
            L2Console(hang_s=opts.stall_timeout_s, boot_s=opts.request.scenario.timeout_s * 10)
            if opts.request.scenario.linux_l2
            else None
        )
        self._ready = False

    @property
    def l2_report(self) -> L2Report | None:
        return self.l2.report if self.l2 is not None else None

    def check_hang(self, now: float) -> None:
        """:raises VMError: a Linux L2 went silent (l2console.py)."""
        if self.l2 is not None:
            self.l2.check_hang(now)

    def feed(self, line: str) -> Said | None:
        """One console line; what it announced, if anything.

        :raises VMError: L1 reported an error, booted without what the recording needs,
            or panicked.
        """
        self._stats.console_tail = [*self._stats.console_tail, line][-8:]
        if line.startswith(READY):
            self._facts.l1_ready_s = round(self._stats.elapsed, 3)
            check_ready(parse_ready(line), self._opts.profile)
            self._stats.phase = f"running {self._opts.request.scenario.name} in L2"
            self._ready = True
            return Said.READY
        if line.startswith(L1_ERROR):
            raise VMError("L1: " + line[len(L1_ERROR) :])
        if self.l2 is not None and self._ready:
            # L2's lines, the inner QEMU's, and L1's done line after them.
            was, on_disk = self.l2.started, self.l2.on_disk
            if self.l2.feed(line):
                assert self.l2.report is not None
                self.truth = ground_truth_of(self.l2.report, self._opts.request.scenario.name)
                self._stats.phase = "L2's report received; finishing"
                return Said.GROUND_TRUTH
            if self.l2.on_disk and not on_disk:
                # The workload's end, as `guest run-linux` times it (bench compares them);
                # the report itself comes from L1 once the inner QEMU has exited.
                self._facts.ground_truth_s = round(self._stats.elapsed, 3)
                self._facts.stops_at_ground_truth = self._stats.stops
                self._stats.phase = "L2 done; L1 reads its report"
            if self.l2.started and not was:
                self._stats.phase = f"booting L2 Linux ({self._opts.request.scenario.name})"
            elif self.l2.steps:
                self._stats.phase = f"L2 workload: {self.l2.steps[-1]}"
            if line.startswith(DONE) and self.truth is not None:
                return Said.DONE
            if not self.l2.started:
                raise_if_panic(line)  # before the inner QEMU, a panic is L1's
            return None
        if line.startswith(GROUND_TRUTH_PREFIX):
            self.truth = parse_ground_truth_line(line)
            self._facts.ground_truth_s = round(self._stats.elapsed, 3)
            self._facts.stops_at_ground_truth = self._stats.stops
            self._stats.phase = "ground truth received; finishing"
            return Said.GROUND_TRUTH
        if line.startswith(DONE) and self.truth is not None:
            return Said.DONE
        raise_if_panic(line)
        return None

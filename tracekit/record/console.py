"""The L1 console protocol: what the guest's init prints, and what each line means to
a recording (guest/runner.py writes the lines)."""

from __future__ import annotations

import enum

from tracekit.errors import VMError
from tracekit.guest.runner import DONE, L1_ERROR, READY, check_ready, parse_ready
from tracekit.model.ground_truth import GROUND_TRUTH_PREFIX, GroundTruth, parse_ground_truth_line
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
            return Said.READY
        if line.startswith(L1_ERROR):
            raise VMError("L1: " + line[len(L1_ERROR) :])
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

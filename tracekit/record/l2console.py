"""The Linux-L2 part of the L1 console protocol, for a recording (issue 15).

After L1's ready line, ``guests/linux-l2/init-l1`` starts the inner QEMU
(``TRACEKIT-L2-QEMU-START``); its stdout is L2's console, so L2's lines arrive on the same
console: ``TRACEKIT-L2-INIT``, ``TRACEKIT-L2-STEP``, ``TRACEKIT-L2-ERROR`` and
``TRACEKIT-L2-REPORT-ON-DISK`` (its report, written to its disk). When the inner QEMU
ends, L1 prints ``TRACEKIT-L2-QEMU-EXIT {"rc": N}``, the last lines of its stderr, L2's
report from the disk image between ``TRACEKIT-L2-REPORT-BEGIN`` / ``-END``, then its
done line.

Each fault of this stack is one line naming what happened, with the inner QEMU's
output and L2's console tail: the inner QEMU failing or dying (its exit before the
report), L2 not reaching its init (a panic on L2's console, or an insmod failure L2's
init reports), a hung L2 (:meth:`L2Console.check_hang`).
"""

from __future__ import annotations

import json
import time

from tracekit.errors import VMError
from tracekit.guest.linux_run import (
    L2_ERROR,
    L2_INIT,
    L2_REPORT_ON_DISK,
    L2_STEP,
    QEMU_EXIT,
    QEMU_START,
    QEMU_STDERR,
)
from tracekit.guest.runner import DONE
from tracekit.model.l2report import REPORT_BEGIN, REPORT_END, L2Report, decode_report, parse_report

__all__ = ["L2Console"]

PANIC = "Kernel panic"


class L2Console:
    """Follows the Linux-L2 lines; :attr:`report` once L2's report arrived whole."""

    def __init__(self, *, hang_s: float, boot_s: float) -> None:
        self.report: L2Report | None = None
        self.report_text = ""
        #: Host seconds (monotonic) of the last L2 line; None before the inner QEMU.
        self.last_l2_line: float | None = None
        self.steps: list[str] = []
        self._hang_s = hang_s
        self._boot_s = boot_s
        self._body: list[str] | None = None
        self._exit_rc: object = None
        self._stderr: list[str] = []
        self._l2_tail: list[str] = []
        self._panic: str | None = None
        self._error: str | None = None
        self._reached_init = False
        self.on_disk = False

    @property
    def started(self) -> bool:
        return self.last_l2_line is not None

    def feed(self, line: str) -> bool:
        """One console line after L1's ready line; True when it was L2's report's end.

        :raises VMError: the inner QEMU ended before the report, or L2's init failed.
        """
        now = time.monotonic()
        if self._body is not None:
            if line.startswith(REPORT_END):
                text = decode_report(self._body)
                self._body = None
                self.report_text = text
                self.report = parse_report(text)
                return True
            if not line.startswith("TRACEKIT-"):
                self._body.append(line)
                return False
        if line.startswith(QEMU_START):
            self.last_l2_line = now
            return False
        if self._exit_rc is not None:
            # After the inner QEMU ended: its stderr, L2's report from its disk, done.
            if line.startswith(QEMU_STDERR):
                self._stderr.append(line[len(QEMU_STDERR) :].strip())
            elif line.startswith(REPORT_BEGIN) and self.on_disk:
                self._body = []
            elif line.startswith(DONE) and self.report is None:
                raise self._failure()
            return False
        if not self.started:
            return False
        self.last_l2_line = now
        if line.startswith(L2_INIT):
            self._reached_init = True
        elif line.startswith(L2_STEP):
            self.steps.append(line[len(L2_STEP) :].partition(" ")[0])
        elif line.startswith(L2_ERROR):
            self._error = line[len(L2_ERROR) :].strip()
        elif line.startswith(L2_REPORT_ON_DISK):
            self.on_disk = True
        elif line.startswith(QEMU_EXIT):
            try:
                self._exit_rc = json.loads(line[len(QEMU_EXIT) :]).get("rc", "?")
            except (ValueError, AttributeError):
                self._exit_rc = "?"
        else:
            if PANIC in line and self._panic is None:
                self._panic = line.strip()[:120]
            if line.strip():
                self._l2_tail = [*self._l2_tail, line.strip()[:100]][-3:]
        return False

    def _failure(self) -> VMError:
        said = " | ".join(self._stderr[-3:]) or "nothing on stderr"
        tail = " | ".join(self._l2_tail) or "nothing"
        if self._panic is not None:
            what = f"L2 panicked{'' if self._reached_init else ' before its /init'}: {self._panic}"
        elif self._error is not None:
            what = f"L2's init failed: {self._error}"
        elif not self._reached_init:
            what = "L2 never reached its /init"
        else:
            what = f"L2 stopped after step {self.steps[-1] if self.steps else '(none)'}"
        return VMError(
            f"the inner QEMU exited (code {self._exit_rc}) before L2's report: {what}; "
            f"inner QEMU said: {said}; L2's console: {tail}",
            hint="the partial trace is kept; see console.log in the raw directory",
        )

    def check_hang(self, now: float) -> None:
        """A started L2 silent for ``hang_s`` (no step, no line) is hung.

        :raises VMError: naming the last step and L2's console tail.
        """
        if self.last_l2_line is None or self.on_disk or self._exit_rc is not None:
            return
        # L2's boot is silent (quiet, loglevel=1) and, under debugger stops, slow: it
        # has the L2 timeout of configs/linux-l2.toml; after its /init, L2 prints a line
        # per workload step and has the stall timeout between them.
        limit = self._hang_s if self._reached_init else self._boot_s
        if now - self.last_l2_line > limit:
            where = (
                f"after step {self.steps[-1]}"
                if self.steps
                else ("at its /init" if self._reached_init else "before its /init")
            )
            raise VMError(
                f"L2 printed nothing for {limit:.0f} s {where} (hung L2?); "
                f"L2's console: {' | '.join(self._l2_tail) or 'nothing'}; "
                "the inner QEMU is still running (its stderr comes only when it exits)",
                hint="the partial trace is kept; a longer --stall-timeout if L2 is just slow",
            )

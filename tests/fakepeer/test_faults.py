"""The fault paths of tests/e2e/test_faults.py, at the Recorder: each ends the recording
with the same one-line reason (and error class), keeps the partial raw data, merges it,
and leaves nothing running."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from tests.fakepeer import kernel
from tests.fakepeer.peers import CtrlC, GdbDies, Hit, QemuExits, Say, Step
from tests.fakepeer.recording import Recorded, record
from tracekit.errors import DebuggerError, VMError
from tracekit.record.pipeline import export_raw

pytestmark = pytest.mark.fakepeer

STOP = "vgic_queue_irq_unlock"
PANIC = "Kernel panic - not syncing: sysrq triggered crash"


def running(*then: Step) -> list[Step]:
    """L1 booted and L2 runs (some hits recorded), then ``then``."""
    return [Say(kernel.ready()), Hit(STOP), Hit(STOP), Hit(STOP), *then]


def failed(rec: Recorded, cls: type[Exception], message: str) -> str:
    assert rec.result.ended_by == "error"
    assert isinstance(rec.result.error, cls), rec.result.error
    reason = rec.result.incomplete_reason
    assert reason is not None and message in reason, reason
    assert "\n" not in reason  # one line
    return reason


def test_qemu_killed(tmp_path: Path) -> None:
    rec = record(tmp_path, running(QemuExits(-9, stderr="", gdb="lost")))
    reason = failed(rec, VMError, "QEMU exited")
    assert reason == "QEMU exited (code -9) before the ground truth"
    assert len(rec.hits()) == 3  # the partial raw data is kept ...
    assert rec.result.meta.merge is not None
    assert rec.result.meta.merge.gdb_hits == 3  # ... and merged
    rec.assert_nothing_left()
    trace = export_raw(rec.raw, rec.result.output)  # a trace of what was seen
    assert trace.output.exists()


def test_qemu_exits_and_gdb_with_it_names_qemu(tmp_path: Path) -> None:
    rec = record(tmp_path, running(QemuExits(1, stderr="qemu: fatal: bad ram", gdb="dies")))
    reason = failed(rec, VMError, "QEMU exited")
    assert reason == "QEMU exited (code 1) before the ground truth: qemu: fatal: bad ram"
    rec.assert_nothing_left()


def test_gdb_killed(tmp_path: Path) -> None:
    rec = record(tmp_path, running(GdbDies()))
    reason = failed(rec, DebuggerError, "GDB")
    assert reason == "GDB closed its output (it exited or was killed)"
    assert len(rec.hits()) == 3
    rec.assert_nothing_left()


def test_guest_hang_is_detected(tmp_path: Path) -> None:
    start = time.monotonic()
    rec = record(tmp_path, running())  # nothing happens after the hits
    assert time.monotonic() - start < 10
    reason = failed(rec, VMError, "no progress")
    assert reason.startswith("no progress for 1 s (guest hang?); CPU state saved in ")
    stall = (rec.raw / "stall.txt").read_text()
    assert "status: {'status': 'running'" in stall and "X0=" in stall
    rec.assert_nothing_left()


def test_l1_kernel_panic(tmp_path: Path) -> None:
    rec = record(tmp_path, running(Say(PANIC), QemuExits(0, gdb="silent")))
    reason = failed(rec, VMError, "panicked")
    assert reason == f"the L1 kernel panicked: {PANIC}"
    assert "Kernel panic" in rec.meta_file()["incomplete_reason"]
    rec.assert_nothing_left()


def test_l1_kernel_panic_noticed_by_gdb_first(tmp_path: Path) -> None:
    # GDB loses the target while the panic line still sits in the console reader: the
    # panic is the cause to name, not GDB.
    rec = record(tmp_path, running(QemuExits(0, last_words=PANIC, gdb="lost")))
    assert failed(rec, VMError, "panicked") == f"the L1 kernel panicked: {PANIC}"
    rec.assert_nothing_left()


def test_l1_reports_an_error(tmp_path: Path) -> None:
    rec = record(tmp_path, [Say("TRACEKIT-L1-ERROR the VMM failed: no /dev/kvm")])
    assert failed(rec, VMError, "L1: ") == "L1: the VMM failed: no /dev/kvm"
    rec.assert_nothing_left()


def test_l1_that_does_not_boot(tmp_path: Path) -> None:
    opts = dataclasses.replace(
        kernel.options(tmp_path),
        profile=dataclasses.replace(kernel.options(tmp_path).profile, boot_timeout_s=1),
    )
    rec = record(tmp_path, [Say("booting")], opts=opts)
    assert failed(rec, VMError, "did not boot") == "L1 did not boot within 1 s"
    rec.assert_nothing_left()


def test_qemu_that_exits_at_start_up(tmp_path: Path) -> None:
    said = "qemu-system-aarch64: -plugin tk_timebase.so: cannot load"
    rec = record(tmp_path, [], qmp_refused=True, exit_at_start=(1, said))
    assert failed(rec, VMError, "start-up") == f"QEMU exited during start-up (code 1): {said}"
    assert "gdb.attach" not in rec.machine.calls
    rec.assert_nothing_left()


def test_ctrl_c_once_stops_cleanly(tmp_path: Path) -> None:
    rec = record(tmp_path, running(CtrlC(), Hit(STOP)))
    assert rec.result.ended_by == "interrupted" and rec.result.error is None
    assert rec.result.incomplete_reason == "interrupted by the user (Ctrl-C)"
    assert len(rec.hits()) == 3
    rec.assert_nothing_left(graceful=True)


def test_ctrl_c_twice_stops_now(tmp_path: Path) -> None:
    rec = record(tmp_path, running(CtrlC(times=2), Hit(STOP)))
    assert rec.result.ended_by == "interrupted"
    assert rec.result.incomplete_reason == "interrupted by the user (Ctrl-C)"
    assert "qemu.stop 0.2" in rec.machine.calls
    rec.assert_nothing_left(graceful=False)

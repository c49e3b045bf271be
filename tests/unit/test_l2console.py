"""The Linux-L2 console protocol of a recording (record/l2console.py): L2's lines, its
report from the disk after the inner QEMU's exit, and each fault as one line."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest

from tracekit.errors import VMError
from tracekit.record.l2console import L2Console

pytestmark = pytest.mark.unit

REPORT = Path(__file__).parents[1] / "data" / "linux-l2" / "l2-report-pci.txt"
DONE = 'TRACEKIT-L1-DONE {"rc":0}'


def report_lines() -> list[str]:
    blob = base64.encodebytes(gzip.compress(REPORT.read_bytes())).decode()
    return ["TRACEKIT-L2-REPORT-BEGIN", *blob.splitlines(), "TRACEKIT-L2-REPORT-END"]


def feed(console: L2Console, lines: list[str]) -> bool:
    said = [console.feed(line) for line in lines]  # every line, no short cut
    return any(said)


START = ['TRACEKIT-L2-QEMU-START {"uptime_s":0.9}', "TRACEKIT-L2-INIT 0.95"]


def test_report_after_the_inner_qemu_exits() -> None:
    c = L2Console(hang_s=60, boot_s=240)
    steps = ["TRACEKIT-L2-STEP blk 1.1", "TRACEKIT-L2-STEP net 1.2"]
    assert not feed(c, [*START, *steps, "TRACEKIT-L2-REPORT-ON-DISK"])
    assert c.on_disk and c.steps == ["blk", "net"] and c.report is None
    lines = ['TRACEKIT-L2-QEMU-EXIT {"rc":0}', *report_lines()]
    assert feed(c, lines)
    assert c.report is not None and c.report.cpus == 2
    c.feed(DONE)  # no failure once the report is in


def test_inner_qemu_refusing_its_command_line() -> None:
    c = L2Console(hang_s=60, boot_s=240)
    feed(c, ['TRACEKIT-L2-QEMU-START {"uptime_s":0.9}', 'TRACEKIT-L2-QEMU-EXIT {"rc":1}'])
    c.feed("TRACEKIT-L2-QEMU-STDERR qemu: 'tk-no-such-device' is not a valid device model name")
    with pytest.raises(VMError) as err:
        c.feed(DONE)
    msg = err.value.message
    assert "inner QEMU exited (code 1)" in msg and "tk-no-such-device" in msg
    assert "never reached its /init" in msg


def test_l2_panic_and_a_failed_module_are_named() -> None:
    c = L2Console(hang_s=60, boot_s=240)
    panic = "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs"
    feed(c, [START[0], panic, 'TRACEKIT-L2-QEMU-EXIT {"rc":0}'])
    with pytest.raises(VMError, match=r"L2 panicked before its /init: .*Kernel panic"):
        c.feed(DONE)
    c = L2Console(hang_s=60, boot_s=240)
    error = "TRACEKIT-L2-ERROR insmod tk-no-such-module.ko failed"
    feed(c, [*START, error, 'TRACEKIT-L2-QEMU-EXIT {"rc":0}'])
    with pytest.raises(VMError, match=r"L2's init failed: insmod tk-no-such-module\.ko failed"):
        c.feed(DONE)


def test_a_silent_l2_is_a_hang_with_the_boot_and_the_step_limits() -> None:
    c = L2Console(hang_s=10, boot_s=100)
    c.check_hang(1e12)  # not started: nothing to say
    c.feed(START[0])
    assert c.last_l2_line is not None
    t = c.last_l2_line
    c.check_hang(t + 50)  # booting: the L2 timeout applies
    with pytest.raises(VMError, match="nothing for 100 s before its /init"):
        c.check_hang(t + 101)
    c.feed(START[1])
    t = c.last_l2_line
    with pytest.raises(VMError, match="nothing for 10 s at its /init"):
        c.check_hang(t + 11)
    c.feed("TRACEKIT-L2-STEP blk 1.1")
    with pytest.raises(VMError, match="after step blk"):
        c.check_hang(c.last_l2_line + 11)
    c.feed("TRACEKIT-L2-REPORT-ON-DISK")
    c.check_hang(1e12)  # done: L1 prints the report


class _GoneVm:
    """A QEMU that has exited with its last console lines still in the reader."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self.console_tail: list[str] = []

    def poll(self) -> int:
        return 0

    def final_lines(self) -> list[str]:
        out, self._lines = self._lines, []
        self.console_tail += out
        return out

    def drain_lines(self) -> list[str]:
        return self.final_lines()

    def stderr_tail(self) -> str:
        return ""


@pytest.mark.parametrize("gdb_lost", [None, "Remote connection closed"])
def test_the_last_lines_are_read_before_an_exit_is_named(gdb_lost: str | None) -> None:
    """L1 printed the inner QEMU's exit, L2's panic and its done line, then powered off:
    whichever noticed first (poll or GDB), the L2 panic is named, not L1's."""
    from tracekit.config import load_machine, load_scenarios
    from tracekit.guest.runner import validate_request
    from tracekit.record.console import ConsoleWatcher
    from tracekit.record.metadata import RunFacts
    from tracekit.record.options import LiveStats, RecordOptions
    from tracekit.record.run import RunLoop

    spec = load_scenarios().get("linux-pci")
    opts = RecordOptions(validate_request(spec, None, 2), load_machine("vhe"), Path("x.pftrace"))
    stats, facts = LiveStats(), RunFacts()
    loop = RunLoop(
        opts, stats, facts, raw_dir=Path("."), gdb="gdb", stamps=None,  # type: ignore[arg-type]
        stop_requested=lambda: False, on_update=lambda _s: None,
    )  # fmt: skip
    console = ConsoleWatcher(opts, stats, facts)
    ready = 'TRACEKIT-L1-READY {"kernel":"6.1.0","kvm_mode":"vhe","dev_kvm":"yes","uptime_s":1}'
    console.feed(ready)
    console.feed('TRACEKIT-L2-QEMU-START {"uptime_s":0.9}')
    vm = _GoneVm(
        [
            "[    0.82] Kernel panic - not syncing: VFS: Unable to mount root fs",
            'TRACEKIT-L2-QEMU-EXIT {"rc":0}',
            DONE,
        ]
    )
    with pytest.raises(VMError, match="L2 panicked before its /init"):
        loop._vm_gone(vm, console, gdb_lost=gdb_lost)  # type: ignore[arg-type]

"""The peers a recording talks to, as narrow Protocols.

The recording steps (launch, arm, run, collect) only see these: the real adapters
(record/adapters.py over pygdbmi, qemu.qmp and the QEMU process; record/stamps.py for the
timebase plugin) implement them, and so do the fakes of tests/fakepeer, which is how stop
handling and the fault paths run without QEMU. Each Protocol holds only what the recorder
calls; the adapters translate their library's errors into tracekit.errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tracekit.errors import VMError
from tracekit.vm.runtime import RuntimeDir

__all__ = [
    "Console",
    "DebugEvent",
    "Debugger",
    "Evaluated",
    "Monitor",
    "PeerFactory",
    "StampStream",
    "Stopped",
    "TargetLost",
    "Vm",
    "VmProcess",
]


# -- the debugger's record stream ----------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    """The target stopped (all CPUs: all-stop mode)."""

    #: GDB's stop reason; only ``breakpoint-hit`` is a probe.
    reason: str | None
    #: The breakpoint number as the debugger named it at insertion.
    breakpoint: str
    #: The debugger's thread id (one thread per vCPU of L1).
    thread: str
    #: Where the CPU stopped (0 unless a breakpoint hit).
    pc: int


@dataclass(frozen=True)
class Evaluated:
    """The answer to one :meth:`Debugger.read_and_resume`."""

    token: int
    #: One value per expression, or None when the read failed.
    values: list[int] | None
    #: Why ``values`` is None.
    error: str = ""


@dataclass(frozen=True)
class TargetLost:
    """The debugger says its target is gone (QEMU's stub closed, or no registers)."""

    message: str


DebugEvent = Stopped | Evaluated | TargetLost


class Debugger(Protocol):
    """GDB attached to QEMU's GDB stub (L1's CPUs as threads)."""

    def attach(self, socket: Path) -> None:
        """Configure the debugger and connect to the stub (the target stays stopped)."""

    def insert_breakpoint(self, address: int) -> str:
        """A hardware-independent breakpoint at ``address``; returns its number."""

    def remove_breakpoint(self, number: str) -> None: ...

    def threads(self) -> dict[str, int]:
        """Thread id -> L1 CPU index."""

    def evaluate(self, expression: str) -> str:
        """Evaluate one expression while stopped and wait for its value."""

    def read_and_resume(self, expressions: Sequence[str], resume_at: int | None = None) -> int:
        """Without waiting: read ``expressions`` (as unsigned longs), move the PC to
        ``resume_at`` if given, resume. The values come later as :class:`Evaluated` with
        the returned token."""

    def resume(self) -> None:
        """Continue all CPUs, without waiting."""

    def events(self, timeout: float) -> Iterator[DebugEvent]:
        """Events as they arrive, until ``timeout`` seconds pass with none.

        :raises DebuggerError: the debugger itself went away.
        """

    def close(self) -> None:
        """End the debugger; it never outlives the recording."""


# -- QEMU ---------------------------------------------------------------------------------


class Monitor(Protocol):
    """QEMU's QMP monitor."""

    @property
    def version(self) -> str: ...

    def connect(self, *, alive: Callable[[], bool]) -> None:
        """Connect once QEMU made its socket; ``alive``: whether QEMU still runs.

        :raises VMError: no socket, or it refused us.
        """

    def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any: ...

    def events(self) -> list[dict[str, Any]]:
        """The watched QMP events seen so far."""

    def quit(self) -> None:
        """Ask QEMU to exit (a closed connection counts as success)."""

    def close(self) -> None: ...


class Console(Protocol):
    """L1's serial console, line by line."""

    @property
    def console_tail(self) -> Sequence[str]:
        """The last lines seen, drained or not."""

    def drain_lines(self) -> list[str]:
        """Lines that arrived since the last call (never blocks)."""

    def final_lines(self) -> list[str]:
        """After QEMU exited: every line not drained yet, up to the end of its output."""


class VmProcess(Protocol):
    """The QEMU process."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> object: ...

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""

    def wait(self, timeout: float) -> int:
        """:raises VMError: still running after ``timeout`` seconds."""

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Terminate (then kill) it if still running, and reap it."""

    def stderr_tail(self) -> str: ...

    def exited_during_startup(self, cause: VMError) -> VMError:
        """``cause`` explained by QEMU's own exit code and last words, if it exited."""


class Vm(VmProcess, Console, Protocol):
    """QEMU with its console: one process, one adapter."""


class StampStream(Protocol):
    """The timebase plugin: told which PCs to stamp, it writes its stamps (with QEMU's
    exception records and trace events) to ``log_file``, which the merge reads."""

    @property
    def probe_file(self) -> Path: ...

    @property
    def log_file(self) -> Path: ...

    def set_probes(self, text: str) -> None:
        """(Re)write the plugin's probe file; it re-reads it at the next translation-cache
        flush (a breakpoint insert does one)."""

    def written(self) -> int:
        """How much the plugin and QEMU have logged so far (bytes): the run's progress
        when no debugger stop shows it (plugin-read values)."""


class PeerFactory(Protocol):
    """Makes the peers of one recording (the real QEMU/GDB ones, or fakes)."""

    def stamps(self, raw_dir: Path) -> StampStream: ...

    def vm(self, argv: Sequence[str], runtime: RuntimeDir) -> Vm: ...

    def monitor(self, runtime: RuntimeDir) -> Monitor:
        """Not connected yet (:meth:`Monitor.connect`)."""

    def debugger(self, transcript: Path) -> Debugger:
        """:raises DebuggerError: it cannot start."""

"""Fake peers of a recording: a scripted L1 machine behind the recorder's Protocols
(tracekit/record/peers.py), so stop handling and the fault paths run without QEMU.

The machine plays its script one step at a time while the target runs (the debugger's
event stream drives it, as GDB's records drive the real loop). Its plugin behaves like
tk_timebase: it stamps only the PCs its probe file lists, and re-reads that file at
start and at each translation-cache flush (a breakpoint insert), so a hyp probe is
stamped only once the recorder relocated it. Given ``h``/``k`` lines (plugin API 4), it
places the hyp probes itself at the first host :class:`Capture`, as relocate_hyp does.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tracekit.errors import DebuggerError, VMError
from tracekit.probes.resolve import ResolvedProbeSet
from tracekit.record.peers import DebugEvent, Evaluated, Stopped, TargetLost
from tracekit.record.stamps import PluginStamps
from tracekit.vm.runtime import RuntimeDir

# -- the script ------------------------------------------------------------------------


@dataclass(frozen=True)
class Say:
    """L1 prints a console line."""

    line: str


@dataclass(frozen=True)
class Hit:
    """A CPU reaches a ``stop`` probe's breakpoint."""

    probe: str
    cpu: int = 0
    #: The exception level the CPU is at (cpsr bits 3:2), and HCR_EL2 (nVHE: VM bit).
    el: int = 2
    hcr: int = 0
    #: GDB expression -> value (anything else reads 0).
    values: dict[str, int] = field(default_factory=dict)
    #: GDB cannot read the values (its message).
    unreadable: str | None = None
    #: The stop is not a breakpoint (e.g. ``signal-received``).
    reason: str = "breakpoint-hit"


@dataclass(frozen=True)
class Run:
    """A CPU executes a probe's instruction without a stop (a ``timing`` probe): hyp
    probes at their EL2 address (kernel address + the boot's hyp VA delta)."""

    probe: str
    cpu: int = 0


@dataclass(frozen=True)
class Capture:
    """A CPU executes a probe the plugin reads values at (plugin API 4, no stop)."""

    probe: str
    cpu: int = 0
    el: int = 1
    hcr: int = 0


@dataclass(frozen=True)
class QemuExits:
    code: int
    stderr: str = ""
    #: A console line printed just before (still in the console reader when GDB notices).
    last_words: str | None = None
    #: What GDB does about it: report the target lost, exit itself, or nothing yet.
    gdb: Literal["lost", "dies", "silent"] = "lost"


@dataclass(frozen=True)
class GdbDies:
    """GDB is killed; QEMU keeps running."""


@dataclass(frozen=True)
class CtrlC:
    times: int = 1


Step = Say | Hit | Run | Capture | QemuExits | GdbDies | CtrlC


# -- the machine -----------------------------------------------------------------------


class Machine:
    """QEMU + L1 as the fakes share them; tests read its record of what was done."""

    def __init__(
        self,
        script: Sequence[Step],
        probes: ResolvedProbeSet,
        *,
        hyp_delta: int = 0,
        vbar_el2: int = 0,
        stale_hyp_probes: int = 0,
        qmp_refused: bool = False,
        exit_at_start: tuple[int, str] | None = None,
    ) -> None:
        self.script = collections.deque(script)
        self.probes = {p.name: p for p in probes.probes}
        self.hyp_delta = hyp_delta
        self.vbar_el2 = vbar_el2
        #: How many hyp probes the plugin finds in code translated before it moved them.
        self.stale_hyp_probes = stale_hyp_probes
        self.hyp_vector: int | None = None
        self.hyp_kvas: list[int] = []
        self.hyp_moved = False
        self.hyp_given_up = False
        self.qmp_refused = qmp_refused
        self.exit_at_start = exit_at_start
        self.running = False
        self.exit_code: int | None = None
        self.stderr = ""
        self.gdb_dead = False
        self.t = 1000
        self.answers: collections.deque[DebugEvent] = collections.deque()
        self.console: collections.deque[str] = collections.deque()
        self.console_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.console_log: Path | None = None
        self.log_file: Path | None = None
        self.probe_file: Path | None = None
        self.stamped: set[int] = set()
        self.breakpoints: dict[str, int] = {}
        self.next_breakpoint = 1
        self.pc_writes: list[int] = []
        self.pending_hit: Hit | None = None
        # What a test checks afterwards.
        self.calls: list[str] = []
        self.qmp: list[tuple[str, dict[str, Any] | None]] = []

    # the plugin
    def reload_probe_file(self) -> None:
        assert self.probe_file is not None
        self.stamped = set()
        self.hyp_kvas = []
        for line in self.probe_file.read_text().splitlines():
            if line.startswith("h "):
                self.hyp_vector = int(line[2:], 16)
            elif line.startswith("k "):
                self.hyp_kvas.append(int(line[2:], 16))
                if self.hyp_moved:
                    self.stamped.add(int(line[2:], 16) + self.hyp_delta)
            elif line and not line.startswith(("m ", "c ")):
                self.stamped.add(int(line, 16))

    def capture(self, step: Capture) -> None:
        """tk_timebase's on_probe_values: the stamp, and the hyp probes' move."""
        p = self.probes[step.probe]
        self.stamp(step.cpu, p.stamp_address)
        if self.hyp_vector is None or self.hyp_moved or self.hyp_given_up:
            return
        if step.el != 1 or step.hcr & 1:
            return
        assert self.log_file is not None
        with self.log_file.open("a") as fh:
            if (self.vbar_el2 & 0xFFF) != (self.hyp_vector & 0xFFF):
                self.hyp_given_up = True
                fh.write(f"TKH {step.cpu} {self.t} {self.vbar_el2:x} bad\n")
                return
            delta = self.vbar_el2 - self.hyp_vector
            self.hyp_moved = True
            self.stamped |= {kva + delta for kva in self.hyp_kvas}
            wrapped = delta & (2**64 - 1)  # the plugin's uint64_t
            fh.write(
                f"TKH {step.cpu} {self.t} {self.vbar_el2:x} {wrapped:x} {self.stale_hyp_probes}\n"
            )

    def stamp(self, cpu: int, pc: int) -> None:
        self.t += 137
        if pc in self.stamped:
            assert self.log_file is not None
            with self.log_file.open("a") as fh:
                fh.write(f"TKP {cpu} {pc:x} {self.t}\n")

    # the CPUs
    def say(self, line: str) -> None:
        self.console.append(line)
        self.console_tail.append(line)
        if self.console_log is not None:
            with self.console_log.open("a") as fh:
                fh.write(line + "\n")

    def advance(self) -> DebugEvent | None:
        """Play one step of the script."""
        step = self.script.popleft()
        if isinstance(step, Say):
            self.say(step.line)
        elif isinstance(step, Hit):
            return self._hit(step)
        elif isinstance(step, Capture):
            self.capture(step)
        elif isinstance(step, Run):
            p = self.probes[step.probe]
            self.stamp(step.cpu, p.address + (self.hyp_delta if p.spec.hyp else 0))
        elif isinstance(step, QemuExits):
            if step.last_words is not None:
                self.say(step.last_words)
            self.exit_code, self.stderr = step.code, step.stderr
            self.running = False
            if step.gdb == "lost":
                return TargetLost("Remote connection closed")
            if step.gdb == "dies":
                self.gdb_dead = True
        elif isinstance(step, GdbDies):
            self.gdb_dead = True
        elif isinstance(step, CtrlC):
            for _ in range(step.times):
                os.kill(os.getpid(), signal.SIGINT)
        return None

    def _hit(self, step: Hit) -> Stopped:
        p = self.probes[step.probe]
        number = next(n for n, a in self.breakpoints.items() if a == p.address)
        self.running = False
        self.pending_hit = step
        self.stamp(step.cpu, p.stamp_address)
        pc = p.address if step.reason == "breakpoint-hit" else 0
        return Stopped(step.reason, number, str(step.cpu + 1), pc)

    def read(self, token: int, expressions: Sequence[str]) -> None:
        step = self.pending_hit
        assert step is not None
        if step.unreadable is not None:
            self.answers.append(Evaluated(token, None, step.unreadable))
            return
        regs = {"$cpsr": step.el << 2, "$HCR_EL2": step.hcr}
        values = [regs.get(e, step.values.get(e, 0)) for e in expressions]
        self.answers.append(Evaluated(token, values))


# -- the peers -------------------------------------------------------------------------


class FakeDebugger:
    def __init__(self, m: Machine) -> None:
        self.m = m
        self.token = 2000

    def _alive(self) -> None:
        if self.m.gdb_dead:
            raise DebuggerError("GDB closed its output (it exited or was killed)")

    def attach(self, socket: Path) -> None:
        self.m.calls.append("gdb.attach")
        self._alive()

    def insert_breakpoint(self, address: int) -> str:
        self._alive()
        number = str(self.m.next_breakpoint)
        self.m.next_breakpoint += 1
        self.m.breakpoints[number] = address
        self.m.calls.append(f"gdb.break-insert {address:#x}")
        self.m.reload_probe_file()  # QEMU flushes its translation cache on every insert
        return number

    def remove_breakpoint(self, number: str) -> None:
        self.m.calls.append(f"gdb.break-delete {number}")
        del self.m.breakpoints[number]

    def threads(self) -> dict[str, int]:
        return {str(cpu + 1): cpu for cpu in range(2)}

    def evaluate(self, expression: str) -> str:
        self._alive()
        if expression == "(unsigned long)$VBAR_EL2":
            return str(self.m.vbar_el2)
        return "0"

    def read_and_resume(self, expressions: Sequence[str], resume_at: int | None = None) -> int:
        self._alive()
        self.token += 1
        self.m.read(self.token, expressions)
        if resume_at is not None:
            self.m.pc_writes.append(resume_at)
        self.m.running = True
        return self.token

    def resume(self) -> None:
        self._alive()
        self.m.running = True

    def events(self, timeout: float) -> Iterator[DebugEvent]:
        self._alive()
        busy = bool(self.m.answers)
        while self.m.answers:
            yield self.m.answers.popleft()
        if self.m.running and self.m.script:
            busy = True
            event = self.m.advance()
            if event is not None:
                yield event
            while self.m.answers:
                yield self.m.answers.popleft()
        self._alive()
        if not busy:
            time.sleep(timeout)  # nothing arrives within the timeout

    def close(self) -> None:
        self.m.calls.append("gdb.close")


class FakeMonitor:
    def __init__(self, m: Machine) -> None:
        self.m = m
        self.version = "7.2.0"

    def connect(self, *, alive: Callable[[], bool]) -> None:
        self.m.calls.append("qmp.connect")
        if self.m.qmp_refused or not alive():
            raise VMError("QEMU exited before it opened its QMP socket")

    def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.m.qmp.append((cmd, args))
        if cmd == "query-cpus-fast":
            return [{"cpu-index": 0}, {"cpu-index": 1}]
        if cmd == "query-status":
            return {"status": "running", "running": True}
        return "X0=0000000000000000"

    def events(self) -> list[dict[str, Any]]:
        return [{"event": "RESUME"}]

    def quit(self) -> None:
        self.m.calls.append("qmp.quit")
        if self.m.exit_code is None:
            self.m.exit_code = 0

    def close(self) -> None:
        self.m.calls.append("qmp.close")


class FakeVm:
    def __init__(self, m: Machine, runtime: RuntimeDir) -> None:
        self.m = m
        m.console_log = runtime.console_log

    @property
    def pid(self) -> int | None:
        return None

    @property
    def console_tail(self) -> Sequence[str]:
        return self.m.console_tail

    def start(self) -> object:
        self.m.calls.append("qemu.start")
        self.m.reload_probe_file()
        if self.m.exit_at_start is not None:
            self.m.exit_code, self.m.stderr = self.m.exit_at_start
        return self

    def poll(self) -> int | None:
        return self.m.exit_code

    def wait(self, timeout: float) -> int:
        if self.m.exit_code is None:
            raise VMError(f"QEMU did not exit within {timeout:.0f} s")
        return self.m.exit_code

    def stop(self, grace_s: float = 5.0) -> int | None:
        self.m.calls.append(f"qemu.stop {grace_s}")
        if self.m.exit_code is None:
            self.m.exit_code = -15
        return self.m.exit_code

    def stderr_tail(self) -> str:
        return self.m.stderr

    def exited_during_startup(self, cause: VMError) -> VMError:
        if self.m.exit_code is None:
            return cause
        return VMError(
            f"QEMU exited during start-up (code {self.m.exit_code}): "
            f"{self.m.stderr or 'no output on stderr'}"
        )

    def drain_lines(self) -> list[str]:
        out = list(self.m.console)
        self.m.console.clear()
        return out

    def final_lines(self) -> list[str]:
        return self.drain_lines()


class FakePlugin(PluginStamps):
    """The stamp stream: the real adapter (it only names the raw directory's files), with
    the fake machine told where they are."""

    def __init__(self, m: Machine, raw_dir: Path) -> None:
        super().__init__(raw_dir)
        self.m = m
        m.probe_file, m.log_file = self.probe_file, self.log_file


class FakePeers:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def stamps(self, raw_dir: Path) -> FakePlugin:
        return FakePlugin(self.m, raw_dir)

    def vm(self, argv: Sequence[str], runtime: RuntimeDir) -> FakeVm:
        self.runtime = runtime
        return FakeVm(self.m, runtime)

    def monitor(self, runtime: RuntimeDir) -> FakeMonitor:
        return FakeMonitor(self.m)

    def debugger(self, transcript: Path) -> FakeDebugger:
        return FakeDebugger(self.m)

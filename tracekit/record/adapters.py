"""The real peers: gdb-multiarch over pygdbmi, QEMU's process and console, qemu.qmp.

Thin: each turns the recorder's Protocol calls (record/peers.py) into the same GDB/MI
commands, QMP calls and process operations the recorder always made, so gdb-mi.log and
the other raw files read as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from tracekit.config import ToolPaths
from tracekit.gdb.mi import MiSession, parse_value_array
from tracekit.record.peers import DebugEvent, Evaluated, Stopped, TargetLost
from tracekit.record.stamps import PluginStamps
from tracekit.vm.qemu import QemuProcess
from tracekit.vm.qmp import Monitor as QmpMonitor
from tracekit.vm.runtime import RuntimeDir

__all__ = ["GdbDebugger", "RealPeers"]

log = logging.getLogger(__name__)

#: GDB's words for a target that went away (its remote end closed, or QEMU died).
_LOST = ("closed", "not being run", "No registers")

_SETTINGS = (
    "-gdb-set architecture aarch64",
    "-gdb-set pagination off",
    "-gdb-set confirm off",
    # Values come back as one array ({a, b, c}): never "<repeats N times>".
    "-gdb-set print repeats unlimited",
    # Cache target memory in 64-byte lines while the VM is stopped: the fields a probe
    # reads share a line or two, and GDB's own look at the code around the PC (after the
    # stop and after the PC write) comes from the cache. GDB drops its data cache whenever
    # the target resumes, so nothing is stale. Halves the remote-protocol round trips per
    # stop (docs/performance.md).
    "-gdb-set mem inaccessible-by-default off",
    '-interpreter-exec console "mem 0xffff000000000000 0xfffffffffffff000 cache"',
    "-gdb-set breakpoint pending off",
    # Keep breakpoints in QEMU across stops: each insert/remove flushes its translation
    # cache (and resuming past skip_entry probes needs no removal).
    "-gdb-set breakpoint always-inserted on",
)


class GdbDebugger:
    """:class:`~tracekit.record.peers.Debugger` over one :class:`MiSession`."""

    def __init__(self, mi: MiSession) -> None:
        self._mi = mi
        #: read_and_resume tokens -> how many values they asked for.
        self._reads: dict[int, int] = {}

    def attach(self, socket: Path) -> None:
        for cmd in _SETTINGS:
            self._mi.command(cmd)
        self._mi.command(f"-target-select remote {socket}", timeout=30)

    def insert_breakpoint(self, address: int) -> str:
        rec = self._mi.command(f"-break-insert *{address:#x}")
        bkpt = rec.payload.get("bkpt", {}) if isinstance(rec.payload, dict) else {}
        return str(bkpt.get("number"))

    def remove_breakpoint(self, number: str) -> None:
        self._mi.command(f"-break-delete {number}")

    def threads(self) -> dict[str, int]:
        info = self._mi.command("-thread-info")
        threads = info.payload.get("threads", []) if isinstance(info.payload, dict) else []
        cpus: dict[str, int] = {}
        for t in threads:
            target = str(t.get("target-id", ""))
            # QEMU names its threads "Thread 1.2 (CPU#1 [running])"; else GDB's own id.
            cpu = (
                int(target.split("CPU#")[1].split(maxsplit=1)[0])
                if "CPU#" in target
                else (int(str(t.get("id", "1"))) - 1)
            )
            cpus[str(t.get("id"))] = cpu
        return cpus

    def evaluate(self, expression: str) -> str:
        rec = self._mi.command(f'-data-evaluate-expression "{expression}"')
        return str(rec.payload.get("value", "")) if isinstance(rec.payload, dict) else ""

    def read_and_resume(self, expressions: Sequence[str], resume_at: int | None = None) -> int:
        # One MI command for all values (an array literal) and one write for the whole
        # stop: every command is a GDB/MI round trip while the whole VM is stopped.
        array = ", ".join(f"(unsigned long)({e})" for e in expressions)
        cmds = [f'-data-evaluate-expression "{{{array}}}"']
        if resume_at is not None:
            cmds.append(f"-gdb-set var $pc = {resume_at:#x}")
        tokens = self._mi.send([*cmds, "-exec-continue"])
        self._reads[tokens[0]] = len(expressions)
        return tokens[0]

    def resume(self) -> None:
        self._mi.send(["-exec-continue"])

    def events(self, timeout: float) -> Iterator[DebugEvent]:
        for rec in self._mi.records(timeout):
            payload = rec.payload if isinstance(rec.payload, dict) else {}
            if rec.type == "notify" and rec.message == "stopped":
                reason = payload.get("reason")
                pc = 0
                if reason == "breakpoint-hit":
                    pc = int(str(payload.get("frame", {}).get("addr", "0")), 16)
                yield Stopped(reason, str(payload.get("bkptno")), str(payload.get("thread-id")), pc)
            elif rec.type == "result" and rec.token in self._reads:
                n = self._reads.pop(rec.token)
                values = parse_value_array(str(payload.get("value", "")), n)
                if rec.message == "done" and values is not None:
                    yield Evaluated(rec.token, values)
                else:
                    why = str(payload.get("msg") or payload.get("value") or "no value")
                    yield Evaluated(rec.token, None, why)
            elif rec.type == "result" and rec.message == "error":
                msg = str(payload.get("msg", ""))
                if any(word in msg for word in _LOST):
                    yield TargetLost(msg)
                else:
                    log.debug("GDB error: %s", msg)

    def close(self) -> None:
        self._mi.close()


class RealPeers:
    """:class:`~tracekit.record.peers.PeerFactory` of a real recording."""

    def __init__(self, tools: ToolPaths) -> None:
        self._tools = tools

    def stamps(self, raw_dir: Path) -> PluginStamps:
        return PluginStamps(raw_dir)

    def vm(self, argv: Sequence[str], runtime: RuntimeDir) -> QemuProcess:
        return QemuProcess(argv, runtime)

    def monitor(self, runtime: RuntimeDir) -> QmpMonitor:
        return QmpMonitor(runtime.qmp_socket)

    def debugger(self, transcript: Path) -> GdbDebugger:
        return GdbDebugger(MiSession(self._tools.gdb, transcript=transcript))

"""The QEMU process: start, watch the L1 console, always tear down.

A thin I/O adapter. QEMU dies with its parent (``PR_SET_PDEATHSIG``), runs in its own
session (a terminal Ctrl-C reaches tracekit, which then shuts QEMU down in order), and its
console is read line by line from the ``-serial stdio`` pipe into ``console.log``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import queue
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from tracekit.errors import VMError
from tracekit.vm.argv import shell_quote
from tracekit.vm.runtime import RuntimeDir

__all__ = ["QemuProcess"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # A QEMU that aborts must not leave a core file of guest memory in the user's cwd.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class QemuProcess:
    """One running ``qemu-system-aarch64``; use as a context manager."""

    def __init__(self, argv: Sequence[str], runtime: RuntimeDir) -> None:
        self.argv = list(argv)
        self.runtime = runtime
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.console_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None
        self._console_file = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> QemuProcess:
        log.info("QEMU: %s", shell_quote(self.argv))
        (self.runtime.path / "qemu.argv").write_text(shell_quote(self.argv) + "\n")
        stderr = self.runtime.qemu_stderr.open("wb")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
                start_new_session=True,
            )
        except FileNotFoundError:
            raise VMError(
                f"{self.argv[0]} not found", hint="install qemu-system-arm (see `tracekit doctor`)"
            ) from None
        finally:
            stderr.close()
        self._reader = threading.Thread(target=self._read_console, name="qemu-console", daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> QemuProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def poll(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            text = self.runtime.qemu_stderr.read_text(errors="replace").strip()
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def exited_during_startup(self, cause: VMError, wait_s: float = 3.0) -> VMError:
        """``cause`` (a socket that closed or never appeared), explained by QEMU itself.

        A QEMU that refuses its command line or a plugin (``-plugin`` load failure, bad
        option) closes its sockets as it exits; the socket error alone says nothing. Give
        it ``wait_s`` to finish exiting, then name its exit code and its last stderr lines.
        """
        proc = self._proc
        if proc is None:
            return cause
        try:
            rc = proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return cause
        said = self.stderr_tail(lines=4) or "no output on stderr"
        return VMError(
            f"QEMU exited during start-up (code {rc}): {said}",
            hint=f"its command line is in {self.runtime.path / 'qemu.argv'}",
        )

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Terminate QEMU if still running (SIGTERM, then SIGKILL) and reap it."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace_s)
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader:
            self._reader.join(timeout=2)
        return proc.returncode

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VMError(f"QEMU did not exit within {timeout:.0f} s") from None

    # -- console -----------------------------------------------------------------------

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self.runtime.console_log.open("ab") as out:
            for raw in self._proc.stdout:
                out.write(raw)
                out.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.console_tail.append(line)
                self._lines.put(line)
        self._lines.put(None)

    def send_console(self, text: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise VMError("QEMU is not running; cannot write to the L1 console")
        try:
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise VMError("QEMU exited; the L1 console is closed") from None

    def final_lines(self, timeout: float = 2.0) -> list[str]:
        """After QEMU exited: every console line not drained yet, up to the end of output.

        The console reader thread may still hold QEMU's last words (a panic message,
        printed just before ``panic=-1`` + ``-no-reboot`` ends QEMU) when the exit is
        noticed elsewhere first (GDB losing the target, ``poll()``).
        """
        if self._reader:
            self._reader.join(timeout=timeout)
        return self.drain_lines()

    def drain_lines(self) -> list[str]:
        """Console lines that arrived since the last call (never blocks)."""
        out: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return out
            if line is None:
                self._lines.put(None)  # keep the end marker for wait_for_line
                return out
            out.append(line)

    def wait_for_line(
        self,
        prefixes: Sequence[str],
        timeout: float,
        *,
        on_line: Callable[[str], None] | None = None,
        deadline_what: str = "the expected console line",
    ) -> str:
        """Return the first console line starting with one of ``prefixes``.

        Raises VMError if QEMU exits first or nothing matches within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VMError(
                    f"timed out after {timeout:.0f} s waiting for {deadline_what}",
                    hint=f"see the L1 console in {self.runtime.console_log}",
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                rc = self.poll()
                raise VMError(
                    f"QEMU exited (code {rc}) before {deadline_what}: {self.stderr_tail()}",
                    hint=f"see {self.runtime.console_log} and {self.runtime.qemu_stderr}",
                )
            if on_line:
                on_line(line)
            if line.startswith(tuple(prefixes)):
                return line


def console_path(runtime: RuntimeDir) -> Path:
    return runtime.console_log

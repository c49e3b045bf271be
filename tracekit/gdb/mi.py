"""A GDB/MI session over pygdbmi: gdb-multiarch attached to QEMU's GDB stub.

pygdbmi starts GDB and parses MI records; reading is done here with ``select`` on GDB's
stdout, so a read returns as soon as a record arrives instead of sleeping a fixed poll
interval (pygdbmi's default costs ~200 ms per command; cs01/pygdbmi#37). Commands carry
tokens so results are matched to their command even when pipelined.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygdbmi import gdbmiparser
from pygdbmi.gdbcontroller import GdbController

from tracekit.errors import DebuggerError

__all__ = ["MiRecord", "MiSession", "parse_record", "parse_value_array"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiRecord:
    """One parsed MI output record (``type``: result, notify, console, log, target...)."""

    type: str
    message: str | None
    payload: Any
    token: int | None


_CSTRING = r'"(?:[^"\\]|\\.)*"'
_VARIABLE = r"[A-Za-z_][\w-]*"


def well_formed(text: str) -> bool:
    """Whether ``text`` follows the GDB/MI output syntax (GDB manual, "GDB/MI Output
    Syntax"): ``[token] ("^" | "*" | "+" | "=") class ("," result)*`` or a stream record
    ``("~" | "@" | "&") c-string``; result = variable "=" value; value = c-string | tuple
    | list. pygdbmi's parser is lenient (an empty string followed by stray quotes and a
    brace reads as an empty value), so a garbled line is refused here instead of becoming
    a wrong value.
    """
    if text[:1] in "~@&":
        return re.fullmatch(_CSTRING, text[1:]) is not None
    m = re.match(r"\d*[\^*+=]" + _VARIABLE, text)
    if m is None:
        return False
    pos = m.end()

    def value(i: int) -> int:
        if i < len(text) and text[i] == '"':
            c = re.compile(_CSTRING).match(text, i)
            return c.end() if c else -1
        if i < len(text) and text[i] in "{[":
            close = "}" if text[i] == "{" else "]"
            i += 1
            if i < len(text) and text[i] == close:
                return i + 1
            while True:
                v = re.compile(_VARIABLE + "=").match(text, i)
                i = value(v.end()) if v else value(i)  # lists may hold bare values
                if i < 0 or i >= len(text):
                    return -1
                if text[i] == close:
                    return i + 1
                if text[i] != ",":
                    return -1
                i += 1
        return -1

    while pos < len(text):
        if text[pos] != ",":
            return False
        v = re.compile(_VARIABLE + "=").match(text, pos + 1)
        if v is None:
            return False
        pos = value(v.end())
        if pos < 0:
            return False
    return True


def parse_record(line: str) -> MiRecord | None:
    """Translate one line of MI output; ``None`` for the ``(gdb)`` prompt and blanks.

    :raises DebuggerError: the line is not GDB/MI output syntax.
    """
    text = line.strip()
    if not text or text == "(gdb)":
        return None
    if not well_formed(text):
        raise DebuggerError(f"unparsable GDB/MI output {text[:60]!r}", hint="see gdb-mi.log")
    try:
        raw = gdbmiparser.parse_response(text)
    except Exception as exc:  # pygdbmi raises bare exceptions on malformed input
        raise DebuggerError(f"unparsable GDB/MI output {text[:60]!r}: {exc}") from None
    token = raw.get("token")
    return MiRecord(
        str(raw.get("type")),
        raw.get("message"),
        raw.get("payload"),
        int(token) if isinstance(token, int) else None,
    )


def parse_value_array(text: str, n: int) -> list[int] | None:
    """GDB's value of an array literal of ``n`` integers (``{1, 2, 3}``), else None."""
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")) or "<" in inner:
        return None
    try:
        values = [int(part.strip().split()[0], 0) for part in inner[1:-1].split(",")]
    except (ValueError, IndexError):
        return None
    return values if len(values) == n else None


class MiSession:
    """gdb-multiarch in MI3 mode. Use as a context manager; GDB always exits."""

    def __init__(self, gdb: str, *, transcript: Path | None = None) -> None:
        try:
            # setsid: a terminal's Ctrl-C must reach tracekit only (which then stops in
            # order), not GDB, which would interrupt the target on its own. prlimit: GDB
            # 13 can abort on an internal error when QEMU vanishes mid-exchange (seen
            # when a second Ctrl-C kills QEMU); that must not leave a core file in the
            # user's working directory. Both exec the next program (util-linux).
            prefix = [tool for tool in ("setsid",) if shutil.which(tool)]
            if shutil.which("prlimit"):
                prefix += ["prlimit", "--core=0"]
            self._ctl = GdbController(
                command=[*prefix, gdb, "--nx", "--quiet", "--interpreter=mi3"],
                time_to_check_for_additional_output_sec=0.0,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise DebuggerError(
                f"cannot start {gdb}: {exc}", hint="install gdb-multiarch (see `tracekit doctor`)"
            ) from None
        proc = self._ctl.gdb_process
        assert proc is not None and proc.stdout is not None and proc.stdin is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._token = 1000
        self._transcript = transcript.open("a") if transcript else None
        self.pending: list[MiRecord] = []

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def __enter__(self) -> MiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._ctl.exit()
        except Exception:  # GDB may already be gone; it must not outlive us either way
            if self._proc.poll() is None:
                self._proc.kill()
        if self._transcript:
            self._transcript.close()
            self._transcript = None

    # -- writing -----------------------------------------------------------------------

    def send(self, commands: Sequence[str]) -> list[int]:
        """Write commands without waiting; return their tokens."""
        tokens = []
        lines = []
        for cmd in commands:
            self._token += 1
            tokens.append(self._token)
            lines.append(f"{self._token}{cmd}\n")
        data = "".join(lines)
        if self._transcript:
            self._transcript.write(data)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(data.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise DebuggerError(
                "GDB exited unexpectedly", hint="see the GDB transcript in the run directory"
            ) from None
        return tokens

    # -- reading -----------------------------------------------------------------------

    def records(self, timeout: float) -> Iterator[MiRecord]:
        """Yield records as they arrive, until ``timeout`` seconds pass with none."""
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                if self._transcript:
                    self._transcript.write(line + "\n")
                rec = parse_record(line)
                if rec is not None:
                    yield rec
            ready, _, _ = select.select([self._fd], [], [], timeout)
            if not ready:
                return
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                raise DebuggerError("GDB closed its output (it exited or was killed)")
            self._buf += data

    def command(self, cmd: str, timeout: float = 30.0) -> MiRecord:
        """Run one command and wait for its result; other records are kept in ``pending``."""
        (token,) = self.send([cmd])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.records(min(0.5, max(0.0, deadline - time.monotonic()))):
                if rec.token == token and rec.type == "result":
                    if rec.message == "error":
                        msg = rec.payload.get("msg", "") if isinstance(rec.payload, dict) else ""
                        raise DebuggerError(f"GDB refused {cmd!r}: {msg}")
                    return rec
                self.pending.append(rec)
        raise DebuggerError(f"GDB did not answer {cmd!r} within {timeout:.0f} s")

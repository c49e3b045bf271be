"""The one exception hierarchy of tracekit.

Every error tracekit raises on purpose derives from :class:`TracekitError`. The CLI turns
these into a one-line message and exit code 2 (bad input, missing piece) or 1 (the tool ran
but found a problem); any other exception is a bug and only shows a traceback with
``--debug``.

::

    TracekitError
     +-- ConfigError            a TOML file in configs/ or given by the user is wrong
     +-- EnvironmentProblem     a tool, package or asset is missing
     +-- GuestBuildError        building the L1 kernel/initramfs/L2 assets failed
     +-- KernelImageError       a kernel image is not what we need (not arm64, no KVM, no BTF...)
     +-- SymbolError            a probed symbol or struct member cannot be resolved
     |    +-- ProbeCheckFailed  `probes check` found probes that do not fit (exit code 1)
     +-- ScenarioError          unknown scenario or bad scenario options
     +-- VMError                QEMU could not start, died, or stopped responding
     +-- DebuggerError          GDB could not attach or misbehaved
     +-- TraceFileError         a .pftrace or raw event log cannot be read or written
     +-- GroundTruthError       the workload's own counters disagree (exit code 1)
     +-- TraceCheckFailed       Perfetto's trace processor finds a trace wrong (exit code 1)
     +-- Interrupted            the user pressed Ctrl-C (exit code 130)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DebuggerError",
    "EnvironmentProblem",
    "GroundTruthError",
    "GuestBuildError",
    "KernelImageError",
    "ProbeCheckFailed",
    "ScenarioError",
    "SymbolError",
    "TraceCheckFailed",
    "TraceFileError",
    "TracekitError",
    "VMError",
    "did_you_mean",
]


def did_you_mean(word: str, known: Iterable[str], otherwise: str | None) -> str | None:
    """The hint for an unknown name: the closest known one, else ``otherwise``."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else otherwise


class TracekitError(Exception):
    """Root of every error tracekit raises on purpose.

    :param message: what was expected and what happened, in one line.
    :param hint: what the user can do about it (appended after "; ").
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class ConfigError(TracekitError):
    """A configuration file or option is malformed, mistyped or inconsistent."""


class EnvironmentProblem(TracekitError):
    """A required external tool, package or guest asset is missing."""


class GuestBuildError(TracekitError):
    """Building the guest assets (kernel, initramfs, VMM) failed."""


class KernelImageError(TracekitError):
    """A kernel image is not usable: not arm64, no KVM, no BTF, unreadable."""


class SymbolError(TracekitError):
    """A kernel symbol, struct or struct member cannot be resolved."""


class ProbeCheckFailed(SymbolError):
    """``probes check`` ran and found probes that do not fit the kernel."""

    exit_code = 1


class ScenarioError(TracekitError):
    """An unknown scenario or invalid scenario options."""


class VMError(TracekitError):
    """QEMU failed to start, crashed, was killed or stopped making progress."""


class DebuggerError(TracekitError):
    """GDB failed to start, attach, or answer."""


class TraceFileError(TracekitError):
    """A trace or raw event file cannot be read or written."""


class GroundTruthError(TracekitError):
    """The workload's own counters disagree with each other or with the trace."""

    exit_code = 1


class TraceCheckFailed(TracekitError):
    """A trace loads, but Perfetto's trace processor shows something wrong in it."""

    exit_code = 1


class Interrupted(TracekitError):
    """The user interrupted a command (Ctrl-C); what was recorded so far is kept."""

    exit_code = 130

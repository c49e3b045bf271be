"""The tracekit CLI as a user runs it: a real child process (shared by every test tier)."""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["run_tracekit", "start_tracekit", "tracekit_argv"]


def tracekit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracekit", *args]


def run_tracekit(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run to completion; a non-zero exit raises only with ``check``."""
    return subprocess.run(
        tracekit_argv(*args),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_tracekit(*args: str) -> subprocess.Popen[str]:
    """Start in the background with piped output (to watch its children meanwhile)."""
    return subprocess.Popen(
        tracekit_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

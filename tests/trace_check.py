"""Every trace the suite writes goes through Perfetto's own trace processor (the UI's parser).

The binary is ``$TRACEKIT_TRACE_PROCESSOR`` or the copy in ``../shared/tools/`` beside the
repository (CI has it there); without it the test fails, it never skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO
from tracekit.export.check import TraceProcessorRunner

__all__ = ["assert_trace_ok", "trace_processor"]


def trace_processor() -> str:
    path = os.environ.get("TRACEKIT_TRACE_PROCESSOR") or str(
        REPO.parent / "shared" / "tools" / "trace_processor_shell"
    )
    if not os.path.isfile(path):
        pytest.fail(f"Perfetto's trace_processor_shell is not at {path}", pytrace=False)
    return path


def assert_trace_ok(trace: Path) -> None:
    """0 error / data-loss stats, no open slice, each chain's flow in phase order."""
    checks = TraceProcessorRunner(trace_processor()).check(trace)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, f"{trace}: " + "; ".join(failed)


def acked(counts: dict[str, int]) -> int:
    """A class's acknowledged chains with all six phases: of one queue, or merged (two
    queues or more, one acknowledgement: docs/phases.md "What a real OS adds"). The
    payload acknowledges each interrupt once, but a timer can still be queued twice
    before that (seen once in 1 600: `mixed --vcpus 8`)."""
    return counts["complete_chains"] + counts.get("merged_chains", 0)

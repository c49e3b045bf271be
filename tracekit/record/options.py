"""What a recording is asked to do, what it shows while it runs, and what it hands back."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracekit.config import MachineProfile
from tracekit.errors import TracekitError
from tracekit.guest.runner import ScenarioRequest
from tracekit.model.events import RawEvent
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.meta import RecordingMeta
from tracekit.probes.spec import ProbeSet
from tracekit.record.merge import MergeStats

__all__ = ["LiveStats", "RecordOptions", "RecordResult", "raw_dir_for", "result_summary"]


def raw_dir_for(output: Path) -> Path:
    """``trace.pftrace`` keeps its raw files in ``trace.raw/``."""
    return output.with_suffix(".raw")


@dataclass(frozen=True)
class RecordOptions:
    request: ScenarioRequest
    profile: MachineProfile
    output: Path
    duration_s: float | None = None
    #: A probe-set name or .toml path; None: the one written for the kernel's family.
    probe_set: str | None = None
    #: Seconds without any progress (hits or console output) before it counts as a hang.
    stall_timeout_s: float = 60.0
    #: Extra L1 kernel command-line arguments (fault injection in tests).
    extra_kernel_args: tuple[str, ...] = ()
    #: Also stop where values are inferred, read them, and check the inference.
    read_values: bool = False
    #: The plugin reads the captures of ``stop`` probes itself (plugin API 4, QEMU >= 9.2)
    #: and those probes need no debugger stop; with ``read_values`` GDB still stops at
    #: every probe with values and each plugin-read value is checked against GDB's.
    plugin_values: bool = False
    #: The workload's source names -> source kinds, kept in the metadata so the summary
    #: can check each chain's recorded source against the workload (never to set it).
    workload_sources: Mapping[str, str] = field(default_factory=dict)
    #: L1's initramfs when not the default one: a Linux-L2 scenario's (guest/linux_l2.py).
    initrd: Path | None = None


@dataclass
class LiveStats:
    """What the live progress display shows; updated by the recorder."""

    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    stops: int = 0
    discarded: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    phases_seen: set[str] = field(default_factory=set)
    console_tail: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class RecordResult:
    output: Path
    raw_dir: Path
    events: list[RawEvent]
    ground_truth: GroundTruth | None
    meta: RecordingMeta
    merge_stats: MergeStats
    #: The probe set resolution loaded (its decoder names the exits in the export).
    probe_set: ProbeSet
    ended_by: str
    incomplete_reason: str | None = None
    #: The fault that ended the recording (its message is in ``incomplete_reason``).
    error: TracekitError | None = None


def result_summary(result: RecordResult) -> dict[str, Any]:
    return {
        "output": str(result.output),
        "raw_dir": str(result.raw_dir),
        "ended_by": result.ended_by,
        "incomplete": result.incomplete_reason,
        "merge": asdict(result.merge_stats),
    }

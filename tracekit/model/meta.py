"""A recording's metadata, typed: what ``meta.json`` holds (pure).

One description from the recorder, which builds it (``record/metadata.py``), through
``meta.json`` to every reader: the merge of ``tracekit export RAW`` (probes, KVM mode, the
IRQ exit code), the exporter, which keeps part of it in the trace (``model/table.py``
``META_KEYS``), and ``summary``, ``explain``, ``record`` and ``bench``, which read it back.
It lives in the model so that each of them can import it without reaching upward.

:meth:`RecordingMeta.from_json` then :meth:`~RecordingMeta.to_json` gives back the same
object, keys and order included (``model/jsonrecord.py``): old raw directories still
export, and keys this tracekit does not know survive. Read from a trace, only the
``META_KEYS`` are set (a missing one is null there); the other fields keep their defaults.

Adding a key is one field here, in the order a recording writes its keys; a value a run
learns (``RunFacts``) is a field of the same name with ``omit_none=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracekit.errors import GroundTruthError
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.jsonrecord import (
    BOOL,
    FLOAT,
    INT,
    INT_MAP,
    JSON,
    STR,
    STR_MAP,
    STRS,
    Codec,
    JsonRecord,
    key,
    tuples,
)
from tracekit.model.l2truth import Window
from tracekit.probes.info import ProbeInfo

__all__ = ["Disagreement", "MergeReport", "PluginDisagreement", "RecordingMeta"]

#: (probe, value, read, inferred, t): a read value that contradicted its inference.
Disagreement = tuple[str, str, int, int, int]
#: (probe, value, GDB's, the plugin's (None: unreadable), t).
PluginDisagreement = tuple[str, str, int, int | None, int]


def _probes_from(v: Any) -> tuple[ProbeInfo, ...]:
    if not isinstance(v, list):
        raise ValueError(f"should be a list of probes, got {v!r}")
    return tuple(ProbeInfo.from_json(p) for p in v)


def _ground_truth_from(v: Any) -> GroundTruth:
    try:
        return GroundTruth.from_json(v)
    except GroundTruthError as exc:
        raise ValueError(exc.message) from None


PROBES: Codec[tuple[ProbeInfo, ...]] = Codec(
    "a list of probes", _probes_from, lambda ps: [p.to_json() for p in ps]
)
GROUND_TRUTH: Codec[GroundTruth] = Codec(
    "the workload's ground truth", _ground_truth_from, GroundTruth.to_json
)


def _window_from(v: Any) -> Window:
    try:
        return Window.from_json(v)
    except GroundTruthError as exc:
        raise ValueError(exc.message) from None


WINDOW: Codec[Window] = Codec("an L2 window (four times)", _window_from, Window.to_json)
DISAGREEMENTS = tuples(STR, STR, INT, INT, INT)
PLUGIN_DISAGREEMENTS = tuples(STR, STR, INT, INT, INT)


@dataclass(frozen=True, kw_only=True)
class MergeReport(JsonRecord):
    """``meta.json``'s ``"merge"``: what joining hits, stamps and log records counted
    (``record/merge.py`` ``MergeStats`` and its ``LogStats``, flattened)."""

    events: int = key(INT, 0)
    gdb_hits: int = key(INT, 0)
    hits_without_timing: int = key(INT, 0)
    stop_timings_without_hit: int = key(INT, 0)
    unknown_pcs: int = key(INT, 0)
    exceptions_paired: int = key(INT, 0)
    exceptions_unpaired: int = key(INT, 0)
    pointers_attached: int = key(INT, 0)
    pointers_orphaned: int = key(INT, 0)
    pointers_agreed: int = key(INT, 0)
    pointers_disagreed: int = key(INT, 0)
    #: ``VALUE.agreed|disagreed|...`` -> count (model/context.py).
    inference: Mapping[str, int] = key(INT_MAP, factory=dict)
    disagreements: tuple[Disagreement, ...] = key(DISAGREEMENTS, ())
    gic_events: int = key(INT, 0)
    #: Debugger stops QEMU logged and the seconds the VM stayed stopped in them.
    debug_stops: int = key(INT, 0)
    debug_paused_s: float = key(FLOAT, 0.0)
    untimed_gic: int = key(INT, 0)
    end_t: int | None = key(INT)
    unattributed_vcpu: int = key(INT, 0)
    per_probe: Mapping[str, int] = key(INT_MAP, factory=dict)
    plugin_values_missing: int = key(INT, 0)
    plugin_values_used: int = key(INT, 0)
    plugin_values_unreadable: int = key(INT, 0)
    plugin_checks: Mapping[str, int] = key(INT_MAP, factory=dict)
    plugin_disagreements: tuple[PluginDisagreement, ...] = key(PLUGIN_DISAGREEMENTS, ())
    plugin_value_lines: int = key(INT, 0)
    plugin_orphan_value_lines: int = key(INT, 0)


MERGE: Codec[MergeReport] = Codec(
    "the merge's counts",
    lambda v: MergeReport.from_json(v, "meta.json's merge"),
    MergeReport.to_json,
)


@dataclass(frozen=True, kw_only=True)
class RecordingMeta(JsonRecord):
    """What a recording was asked, what it saw and how it ended (``meta.json``).

    Fields a trace keeps (``META_KEYS``) may be None (null in the trace when the recording
    had no such key); readers say what None means to them.
    """

    # -- known before QEMU starts (record/metadata.py initial_meta)
    scenario: str | None = key(STR)
    count: int | None = key(INT)
    vcpus: int | None = key(INT)
    machine: str | None = key(STR)
    kvm_mode: str | None = key(STR)
    kernel_release: str | None = key(STR)
    kernel_version: str | None = key(STR)
    qemu_argv: tuple[str, ...] = key(STRS, ())
    timebase: str | None = key(STR)
    icount: str | None = key(STR)
    #: At their final (nVHE: relocated) addresses once the recording ended.
    probes: tuple[ProbeInfo, ...] = key(PROBES, ())
    #: (probe, why) of the probes resolution skipped.
    probes_skipped: tuple[tuple[str, str], ...] = key(tuples(STR, STR), ())
    host_el: int | None = key(INT)
    probe_set: str | None = key(STR)
    kernel_family: str | None = key(STR)
    read_values: bool = key(BOOL, False)
    plugin_values: bool = key(BOOL, False)
    #: The workload's source names -> source kinds (model/summary.py checks sources).
    workload_sources: Mapping[str, str] | None = key(STR_MAP)
    #: Probe name -> function+offset, for `tracekit explain`.
    probe_locations: Mapping[str, str] | None = key(STR_MAP)
    #: function+offset -> file:line when `guest build --debug-info` cached them.
    probe_lines: Mapping[str, str] | None = key(STR_MAP)
    #: The exit code of __guest_enter's early return (model/context.py).
    irq_exit_code: int | None = key(INT)
    # -- learnt while the VM runs (record/metadata.py RunFacts: absent when not reached)
    qemu_version: str | None = key(STR, omit_none=True)
    #: QMP's query-cpus-fast reply, as it came (nothing reads it back).
    cpus: Any = key(JSON, omit_none=True)
    mi_roundtrip_ms: float | None = key(FLOAT, omit_none=True)
    ready_s: float | None = key(FLOAT, omit_none=True)
    hyp_va_delta: int | None = key(INT, omit_none=True)
    vbar_el2: int | None = key(INT, omit_none=True)
    #: GDB's VBAR_EL2 read, when the plugin placed the hyp probes under --read-values.
    vbar_el2_gdb: int | None = key(INT, omit_none=True)
    l1_ready_s: float | None = key(FLOAT, omit_none=True)
    ground_truth_s: float | None = key(FLOAT, omit_none=True)
    stops_at_ground_truth: int | None = key(INT, omit_none=True)
    qmp_events: Mapping[str, int] | None = key(INT_MAP, omit_none=True)
    # -- how it ended
    ended_by: str | None = key(STR)
    incomplete_reason: str | None = key(STR)
    ground_truth: GroundTruth | None = key(GROUND_TRUTH)
    #: A Linux L2's measured window, from its marks (model/l2truth.py); None otherwise.
    l2_window: Window | None = key(WINDOW, omit_none=True)
    wall_s: float | None = key(FLOAT)
    stops: int | None = key(INT)
    discarded_non_host: int | None = key(INT)
    # -- the merge of the raw files (record/finish.py)
    merge: MergeReport | None = key(MERGE, omit_none=True)

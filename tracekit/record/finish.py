"""Step 6, merge: the raw files -> ``events.jsonl`` (pipeline.remerge: merge.py, then the
inferred values) and ``meta.json``; the :class:`RecordResult` handed back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tracekit.errors import GroundTruthError, TracekitError
from tracekit.model.events import RawEvent
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.l2truth import msi_routes, resolve_msis, window_of
from tracekit.model.meta import RecordingMeta
from tracekit.probes.spec import ProbeSet
from tracekit.record.metadata import merge_meta
from tracekit.record.options import RecordResult
from tracekit.record.pipeline import remerge

__all__ = ["incomplete_reason", "merge_recording"]


def incomplete_reason(
    ended_by: str, truth: GroundTruth | None, incomplete: str | None
) -> str | None:
    """Why the recording does not count as complete (None: it does)."""
    if ended_by == "interrupted" and incomplete is None:
        return "interrupted by the user (Ctrl-C)"
    if truth is None and incomplete is None:
        return f"recording ended ({ended_by}) before the workload's ground truth"
    return incomplete


def merge_recording(
    output: Path,
    raw_dir: Path,
    meta: RecordingMeta,
    truth: GroundTruth | None,
    probe_set: ProbeSet,
    error: TracekitError | None = None,
    *,
    linux_l2: bool = False,
) -> RecordResult:
    events, mstats = remerge(raw_dir, meta)
    incomplete = meta.incomplete_reason
    if mstats.log.unattributed_vcpu and incomplete is None:
        # Those lines may carry another vCPU's number: chains built on them could be
        # silently wrong, so the recording does not count as complete.
        incomplete = (
            f"{mstats.log.unattributed_vcpu} plugin stamps could not name the running vCPU"
            " (this QEMU does not export current_cpu; see docs/timebase.md)"
        )
    meta = dataclasses.replace(meta, merge=merge_meta(mstats), incomplete_reason=incomplete)
    if truth is not None and linux_l2:
        truth, meta, error = _l2_window(events, truth, meta, error)
    (raw_dir / "meta.json").write_text(json.dumps(meta.to_json(), indent=1, default=str))
    return RecordResult(
        output, raw_dir, events, truth, meta, mstats, probe_set, str(meta.ended_by),
        meta.incomplete_reason, error,
    )  # fmt: skip


def _l2_window(
    events: list[RawEvent], truth: GroundTruth, meta: RecordingMeta, error: TracekitError | None
) -> tuple[GroundTruth, RecordingMeta, TracekitError | None]:
    """A Linux L2's window from its marks, and its MSIs joined to the LPIs the recording
    saw (model/l2truth.py). A window that cannot be found leaves the recording
    incomplete: its counts would have no interval to be compared in."""
    try:
        window = window_of(events)
        if window is None:
            raise GroundTruthError(
                "the recording saw none of L2's window marks (io_mem_abort at the mark IPA)",
                hint="check that the probe set's io_mem_abort captures fault_ipa",
            )
        truth = resolve_msis(truth, msi_routes(events))
    except GroundTruthError as exc:
        meta = dataclasses.replace(
            meta, ground_truth=truth, incomplete_reason=meta.incomplete_reason or str(exc)
        )
        return truth, meta, error or exc
    return truth, dataclasses.replace(meta, ground_truth=truth, l2_window=window), error

"""From a recording's raw files to a ``.pftrace`` (thin I/O around the pure pieces).

Used at the end of ``record`` and by ``tracekit export RAW_DIR`` to rebuild a trace from
whatever was captured (after a crash the raw files are all there is).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import TraceFileError
from tracekit.export.perfetto import export_trace
from tracekit.model.chains import Reconstruction
from tracekit.model.context import infer_values
from tracekit.model.events import RawEvent, read_events, write_events
from tracekit.model.incremental import reconstruct
from tracekit.model.meta import RecordingMeta
from tracekit.probes.spec import ExitDecoder, load_probe_set
from tracekit.record.merge import GdbHit, MergeStats, merge

__all__ = ["ExportReport", "export_raw", "remerge"]


@dataclass(frozen=True)
class ExportReport:
    output: Path
    reconstruction: Reconstruction
    counts: dict[str, int]
    meta: RecordingMeta


def remerge(raw_dir: Path, meta: RecordingMeta) -> tuple[list[RawEvent], MergeStats]:
    """Merge hits.jsonl and qemu.log again (tolerates a torn last line), then infer
    the values the probe set says follow from context (model/context.py)."""
    probes = meta.probes
    rules = {p.name: p.infer for p in probes if p.infer}
    hits: list[GdbHit] = []
    hits_path = raw_dir / "hits.jsonl"
    if hits_path.exists():
        for line in hits_path.read_text(errors="replace").splitlines():
            try:
                hits.append(GdbHit.from_json(line))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash
    stats = MergeStats()
    log_path = raw_dir / "qemu.log"
    kvm_mode = meta.kvm_mode or "vhe"
    if log_path.exists():
        # Streamed: a long recording's log is hundreds of MB (issue 14's 2000-count run:
        # 55 MB, ~1.2 M lines, which as a list of strings alone doubled the peak RSS).
        with log_path.open(errors="replace") as log:
            events = merge(hits, log, probes, stats, kvm_mode)
    else:
        events = merge(hits, [], probes, stats, kvm_mode)
    inferred = infer_values(events, rules, irq_exit_code=meta.irq_exit_code)
    events = inferred.events
    stats.inference = dict(sorted(inferred.stats.items()))
    stats.disagreements = inferred.disagreements
    with (raw_dir / "events.jsonl").open("w") as out:
        write_events(events, out)
    return events, stats


def load_meta(raw_dir: Path) -> RecordingMeta:
    try:
        data = json.loads((raw_dir / "meta.json").read_text())
    except FileNotFoundError:
        raise TraceFileError(
            f"{raw_dir} has no meta.json",
            hint="pass the .raw directory written by `tracekit record`",
        ) from None
    except (ValueError, OSError) as exc:
        raise TraceFileError(f"{raw_dir}/meta.json is unreadable ({exc})") from None
    return RecordingMeta.from_json(data, f"{raw_dir}/meta.json")


def export_raw(
    raw_dir: Path,
    output: Path,
    *,
    decoder: ExitDecoder | None = None,
    events: list[RawEvent] | None = None,
    meta: RecordingMeta | None = None,
) -> ExportReport:
    """Write the trace of ``raw_dir``. ``record`` passes what it has (its probe set's
    decoder, the merged events, the metadata); ``tracekit export RAW`` has only the raw
    files, so the probe set is the one meta.json names (recordings before that key were
    all linux-6.1's)."""
    meta = meta if meta is not None else load_meta(raw_dir)
    if events is None:
        ev_path = raw_dir / "events.jsonl"
        if ev_path.exists():
            with ev_path.open() as fh:
                events = list(read_events(fh))
        else:
            events, _ = remerge(raw_dir, meta)
    dec = decoder or load_probe_set(meta.probe_set or "linux-6.1").decoder
    recon = reconstruct(events, dec, meta.kvm_mode or "vhe")
    tmp = output.with_name(output.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            counts = export_trace(fh, recon, events, dec, meta)
        os.replace(tmp, output)
    except OSError as exc:
        raise TraceFileError(
            f"cannot write {output}: {exc.strerror}", hint="choose a writable --output"
        ) from None
    return ExportReport(output, recon, counts, meta)

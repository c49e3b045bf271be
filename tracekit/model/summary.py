"""What ``tracekit summary`` reports, computed from the chain table (pure).

Everything comes from the table's rows (``model/table.py``): a chain's class, INTID,
completeness and per-phase durations, each exit's reason and D, and the recording's
metadata (ground truth, versions, KVM mode). ``summary`` reads the table back from the
``.pftrace``; ``record`` builds it from its reconstruction without reading the file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tracekit.model.ground_truth import GroundTruth
from tracekit.model.l2truth import Window, check_window
from tracekit.model.meta import RecordingMeta
from tracekit.model.table import ChainRow, ChainTable, UnackedRow
from tracekit.model.trace import TraceContent
from tracekit.model.vocabulary import CLASSES, PHASES

__all__ = ["COUNT_KEYS", "class_counts", "matches", "percentile", "summarize", "summarize_table"]

#: Per class, what ``class_counts`` reports (docs/phases.md, "What a real OS adds"):
#: the workload's count, complete chains of one queue, complete chains that absorbed
#: further queues (merged), chains missing a phase (merged or not), and queues never
#: acknowledged. A recording matches its ground truth when complete + merged equals it
#: and nothing is partial (``matches``).
COUNT_KEYS = (
    "ground_truth",
    "complete_chains",
    "merged_chains",
    "partial_chains",
    "unacknowledged",
)


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return int(sorted_values[k])


def _stats(values: list[int]) -> dict[str, int]:
    v = sorted(values)
    return {
        "count": len(v),
        "p50": percentile(v, 50),
        "p95": percentile(v, 95),
        "max": v[-1] if v else 0,
        "total": sum(v),
    }


def _workload_kinds(gt: GroundTruth | None, names: Mapping[str, str]) -> dict[tuple[int, int], str]:
    """(INTID, vCPU) -> the source kind the workload reports for it."""
    if gt is None:
        return {}
    out = {}
    for irq in gt.interrupts:
        kind = names.get(irq.source)
        if kind:
            out[(irq.intid, irq.vcpu)] = kind
    return out


def class_counts(
    chains: Iterable[ChainRow],
    unacked: Iterable[UnackedRow],
    gt: Mapping[str, int],
) -> dict[str, dict[str, int]]:
    """Per class (every one of ``CLASSES``, then any other a row names, e.g. ``unknown``),
    the counts of ``COUNT_KEYS`` over the given rows; ``gt`` is the ground truth per
    class. Pass only the rows of a time window to count that window."""
    out: dict[str, dict[str, int]] = {c: _zero(gt.get(c, 0)) for c in CLASSES}
    for row in chains:
        entry = out.get(row.cls)
        if entry is None:
            entry = out[row.cls] = _zero(gt.get(row.cls, 0))
        if not row.complete:
            entry["partial_chains"] += 1
        elif row.merged_queues:
            entry["merged_chains"] += 1
        else:
            entry["complete_chains"] += 1
    for u in unacked:
        entry = out.get(u.cls)
        if entry is None:
            entry = out[u.cls] = _zero(gt.get(u.cls, 0))
        entry["unacknowledged"] += 1
    return out


def _zero(gt: int) -> dict[str, int]:
    return {k: gt if k == "ground_truth" else 0 for k in COUNT_KEYS}


def matches(counts: Mapping[str, int]) -> bool:
    """A class's chains account for its ground truth: every acknowledged interrupt is a
    complete chain (of one queue or merged) and none is partial."""
    return (
        counts["complete_chains"] + counts["merged_chains"] == counts["ground_truth"]
        and not counts["partial_chains"]
    )


def summarize(content: TraceContent) -> dict[str, Any]:
    """``tracekit summary`` of a trace read back: its table's summary and what reading
    the file found wrong. A trace without a table is a TraceFileError saying what to do."""
    out = summarize_table(content.table.required(content.source))
    out["trace_problems"] = content.problems[:20]
    out["unterminated_flows"] = len(content.unterminated_flows())
    return out


def summarize_table(table: ChainTable) -> dict[str, Any]:
    """Everything ``summary`` reports that the chain table alone decides."""
    meta = table.meta or RecordingMeta()
    gt = meta.ground_truth
    per_class_gt = gt.per_class() if gt is not None else {}
    window = meta.l2_window
    l2: dict[str, Any] | None = None
    if window is None:
        classes = class_counts(table.chains, table.unacknowledged, per_class_gt)
    else:
        classes, l2 = _l2_window(table, window, gt)
    latency: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    busiest: Counter[tuple[int, int, str]] = Counter()
    expected = _workload_kinds(gt, meta.workload_sources or {})
    slowest: dict[str, tuple[int, int]] = {}
    mismatches: Counter[tuple[int, int, str, str]] = Counter()
    for row in table.chains:
        cls = row.cls
        entry = classes[cls]
        complete = row.complete
        if complete:
            length = row.length_ns
            if length > slowest.get(cls, (-1, 0))[0]:
                slowest[cls] = (length, row.id)
        ik = (row.intid, row.vcpu)
        if complete and ik in expected:
            # The recording's source against the workload's own word for this (INTID, vCPU).
            entry["source_checked"] = entry.get("source_checked", 0) + 1
            kind = row.source_kind or "unknown"
            if kind == expected[ik]:
                entry["source_matches"] = entry.get("source_matches", 0) + 1
            else:
                mismatches[(*ik, kind, expected[ik])] += 1
        busiest[(row.intid, row.vcpu, cls)] += 1
        for p, d in row.phase_ns.items():
            latency[cls][p].append(d)
            if complete:
                seen.add(p)
    exits: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for ex in table.exits:
        exits[(ex.exit_code_name, ex.esr_class, ex.handler)].append(ex.phase_ns.get("D", 0))
    by_reason = [
        {
            "exit_code": k[0],
            "esr_class": k[1],
            "handler": k[2],
            "count": len(v),
            "d_p50_ns": percentile(sorted(v), 50),
            "d_max_ns": max(v) if v else 0,
        }
        for k, v in sorted(exits.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    time_in_phase = {p: sum(sum(latency[c][p]) for c in latency) for p in PHASES}
    names = l2_names(gt) if window is not None else {}
    out: dict[str, Any] = {
        "scenario": meta.scenario,
        # A table without metadata (not a tracekit trace's) has no mode to tell.
        "kvm_mode": meta.kvm_mode if table.meta is not None else "unknown",
        "kernel": meta.kernel_release,
        "qemu": meta.qemu_version,
        "timebase": meta.timebase,
        "incomplete_reason": meta.incomplete_reason,
        "classes": classes,
        "phases_seen": [p for p in PHASES if p in seen],
        "phase_latency_ns": {
            c: {p: _stats(latency[c][p]) for p in PHASES if latency[c][p]} for c in sorted(latency)
        },
        "exits": {"total": sum(r["count"] for r in by_reason), "by_reason": by_reason},
        "busiest_intids": [
            _busy(k, n, names)
            for k, n in sorted(busiest.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        ],
        "time_in_phase_ns": time_in_phase,
        "slowest_chains": {
            c: {"chain": v[1], "phases_ns": v[0]} for c, v in sorted(slowest.items())
        },
        "source_mismatches": [
            {"intid": k[0], "vcpu": k[1], "recorded": k[2], "workload": k[3], "chains": n}
            for k, n in sorted(mismatches.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        ],
    }
    if l2 is not None:
        out["l2_window"] = l2
    return out


def _busy(key: tuple[int, int, str], chains: int, names: Mapping[int, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"intid": key[0], "vcpu": key[1], "class": key[2], "chains": chains}
    if key[0] in names:
        row["name"] = names[key[0]]
    return row


def l2_names(gt: GroundTruth | None) -> dict[int, str]:
    """INTID -> the Linux L2's own name for it (``virtio0-req.0``, ``arch_timer``): the
    guest's IRQ names, MSIs by the LPI the recording saw them translated to."""
    if gt is None:
        return {}
    return {i.intid: i.source for i in gt.interrupts if i.intid >= 0 and i.source}


def _l2_window(
    table: ChainTable, window: Window, gt: GroundTruth | None
) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """A Linux L2's recording: the classes counted over the measured window (chains by
    their acknowledgement, unacknowledged queues by their time) and the per-(INTID, vCPU)
    check against the guest's own counts (model/l2truth.py)."""
    inner = [r for r in table.chains if r.ack_ns is not None and window.place(r.ack_ns) == "inner"]
    unacked = [u for u in table.unacknowledged if window.place(u.t) == "inner"]
    per_class_gt = gt.per_class() if gt is not None else {}
    classes = class_counts(inner, unacked, per_class_gt)
    bracketed = [
        r for r in table.chains if r.ack_ns is not None and window.place(r.ack_ns) == "bracket"
    ]
    for c in classes.values():
        c["bracketed"] = 0
    for r in bracketed:
        classes.setdefault(r.cls, {})["bracketed"] = classes.get(r.cls, {}).get("bracketed", 0) + 1
    acks = [(r.ack_ns, r.intid, r.vcpu) for r in table.chains if r.ack_ns is not None]
    checks = check_window(gt, window, acks) if gt is not None else []
    return classes, {
        "window_ns": window.end_before - window.begin_after,
        "brackets_ns": [
            window.begin_after - window.begin_before,
            window.end_after - window.end_before,
        ],
        "ok": bool(checks) and all(c.ok for c in checks),
        "exact": sum(c.exact for c in checks),
        "intids": [
            {
                "intid": c.intid,
                "vcpu": c.vcpu,
                "class": c.cls,
                "name": c.name,
                "guest": c.guest,
                "recorded": c.inner,
                "bracketed": c.bracketed,
                "ok": c.ok,
            }
            for c in checks
        ],
        "differences": [c.describe() for c in checks if not c.ok][:10],
    }


def window_matches(counts: Mapping[str, int]) -> bool:
    """A class of a Linux L2's window: its chains account for the guest's count, up to
    the acknowledgements that fell in a snapshot's bracket, and none is partial."""
    acked = counts["complete_chains"] + counts["merged_chains"]
    gt = counts["ground_truth"]
    return acked <= gt <= acked + counts.get("bracketed", 0) and not counts["partial_chains"]

"""What ``tracekit summary`` reports, computed from a trace read back (pure).

Everything comes from the ``.pftrace`` itself: the chain slices (with their class, INTID,
completeness and per-phase durations as debug annotations), the exit slices of the L1 CPU
tracks, and the recording's metadata instant (ground truth, versions, KVM mode).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from tracekit.model.trace import TraceContent
from tracekit.model.vocabulary import CLASSES, PHASES

__all__ = ["percentile", "summarize"]


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


def _workload_kinds(gt: Any, names: dict[str, str]) -> dict[tuple[int, int], str]:
    """(INTID, vCPU) -> the source kind the workload reports for it."""
    if not isinstance(gt, dict):
        return {}
    out = {}
    for irq in gt.get("interrupts", []):
        kind = names.get(str(irq.get("source", "")))
        if kind:
            out[(int(irq["intid"]), int(irq["vcpu"]))] = kind
    return out


def summarize(content: TraceContent) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for inst in content.instants:
        if "tracekit.meta" in inst.args:
            meta = json.loads(str(inst.args["tracekit.meta"]))
            break
    gt = meta.get("ground_truth") or {}
    per_class_gt = gt.get("per_class", {}) if isinstance(gt, dict) else {}
    chains = [s for s in content.slices if "chain" in s.args and "class" in s.args]
    classes: dict[str, dict[str, int]] = {
        c: {"ground_truth": int(per_class_gt.get(c, 0)), "complete_chains": 0, "partial_chains": 0}
        for c in CLASSES
    }
    latency: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    busiest: Counter[tuple[int, int, str]] = Counter()
    expected = _workload_kinds(gt, meta.get("workload_sources") or {})
    slowest: dict[str, tuple[int, int]] = {}
    mismatches: Counter[tuple[int, int, str, str]] = Counter()
    for s in chains:
        cls = str(s.args["class"])
        entry = classes.setdefault(
            cls, {"ground_truth": 0, "complete_chains": 0, "partial_chains": 0}
        )
        complete = bool(s.args.get("complete"))
        entry["complete_chains" if complete else "partial_chains"] += 1
        if complete:
            # The chain's length: every phase from A's start to the acknowledgement.
            length = sum(int(s.args.get(f"phase_{p}_ns") or 0) for p in PHASES)
            if length > slowest.get(cls, (-1, 0))[0]:
                slowest[cls] = (length, int(s.args["chain"]))
        ik = (int(s.args["intid"]), int(s.args["vcpu"]))
        if complete and ik in expected:
            # The recording's source against the workload's own word for this (INTID, vCPU).
            entry["source_checked"] = entry.get("source_checked", 0) + 1
            kind = str(s.args.get("source_kind") or "unknown")
            if kind == expected[ik]:
                entry["source_matches"] = entry.get("source_matches", 0) + 1
            else:
                mismatches[(*ik, kind, expected[ik])] += 1
        busiest[(int(s.args["intid"]), int(s.args["vcpu"]), cls)] += 1
        for p in PHASES:
            d = s.args.get(f"phase_{p}_ns")
            if d is not None:
                latency[cls][p].append(int(d))
                if complete:
                    seen.add(p)
    exits: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for s in content.slices:
        if s.name.startswith("exit vCPU") and "exit_code_name" in s.args:
            key = (
                str(s.args.get("exit_code_name")),
                str(s.args.get("esr_class") or ""),
                str(s.args.get("handler") or ""),
            )
            exits[key].append(int(s.args.get("phase_D_ns", 0)))
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
    return {
        "scenario": meta.get("scenario"),
        "kvm_mode": meta.get("kvm_mode", "unknown"),
        "kernel": meta.get("kernel_release"),
        "qemu": meta.get("qemu_version"),
        "timebase": meta.get("timebase"),
        "incomplete_reason": meta.get("incomplete_reason"),
        "classes": classes,
        "phases_seen": [p for p in PHASES if p in seen],
        "phase_latency_ns": {
            c: {p: _stats(latency[c][p]) for p in PHASES if latency[c][p]} for c in sorted(latency)
        },
        "exits": {"total": sum(r["count"] for r in by_reason), "by_reason": by_reason},
        "busiest_intids": [
            {"intid": k[0], "vcpu": k[1], "class": k[2], "chains": n}
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
        "trace_problems": content.problems[:20],
        "unterminated_flows": len(content.unterminated_flows()),
    }

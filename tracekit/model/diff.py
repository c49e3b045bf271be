"""Compare two trace summaries per class and phase (pure): ``tracekit diff``."""

from __future__ import annotations

from typing import Any

from tracekit.model.vocabulary import CLASSES, PHASES

__all__ = ["diff_summaries"]


def _change(a: float, b: float) -> float | None:
    return None if a == 0 else round((b - a) / a * 100, 1)


def diff_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Side by side: chains per class, and per (class, phase) count and p50/p95 latency."""
    rows = []
    for cls in CLASSES:
        la = a["phase_latency_ns"].get(cls, {})
        lb = b["phase_latency_ns"].get(cls, {})
        for p in PHASES:
            sa, sb = la.get(p), lb.get(p)
            if sa is None and sb is None:
                continue
            sa = sa or {"count": 0, "p50": 0, "p95": 0}
            sb = sb or {"count": 0, "p50": 0, "p95": 0}
            rows.append(
                {
                    "class": cls,
                    "phase": p,
                    "a_count": sa["count"],
                    "b_count": sb["count"],
                    "a_p50_ns": sa["p50"],
                    "b_p50_ns": sb["p50"],
                    "p50_change_pct": _change(sa["p50"], sb["p50"]),
                    "a_p95_ns": sa["p95"],
                    "b_p95_ns": sb["p95"],
                    "p95_change_pct": _change(sa["p95"], sb["p95"]),
                }
            )
    return {
        "a": {"kvm_mode": a.get("kvm_mode"), "scenario": a.get("scenario")},
        "b": {"kvm_mode": b.get("kvm_mode"), "scenario": b.get("scenario")},
        "classes": {
            cls: {"a": a["classes"].get(cls), "b": b["classes"].get(cls)} for cls in CLASSES
        },
        "phases": rows,
        "exits": {"a": a["exits"]["total"], "b": b["exits"]["total"]},
    }

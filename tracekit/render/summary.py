"""Rich renderables for ``tracekit summary`` (no I/O: the CLI owns the Console)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tracekit.model.summary import matches as matches_ground_truth
from tracekit.model.summary import window_matches

__all__ = ["render_summary"]

PHASE_NAMES = {
    "A": "source",
    "B": "guest exit",
    "C": "EL2->host",
    "D": "handle_exit",
    "E": "inject (LRs)",
    "F": "guest entry",
}


def _ns(v: int) -> str:
    return f"{v / 1000:.1f} µs" if v >= 1000 else f"{v} ns"


def render_summary(s: dict[str, Any], width: int = 30) -> RenderableType:
    parts: list[RenderableType] = []
    head = Text.assemble(
        ("tracekit summary", "bold"),
        f"  scenario {s.get('scenario')}  KVM {s.get('kvm_mode')}"
        f"  kernel {s.get('kernel')}  QEMU {s.get('qemu')}",
    )
    parts.append(head)
    parts.append(Text(f"timebase: {s.get('timebase')}", style="dim"))
    if s.get("incomplete_reason"):
        parts.append(Text(f"INCOMPLETE: {s['incomplete_reason']}", style="bold red"))
    l2 = s.get("l2_window")
    t = Table(
        title="interrupt chains against the workload's ground truth"
        if l2 is None
        else "interrupt chains against L2's own counts, over its measured window"
    )
    for col in (
        "class",
        "ground truth",
        "complete A–F",
        "merged",
        "partial",
        "unacked",
        "",
        "source = workload",
    ):
        t.add_column(col, justify="left" if col in ("class", "") else "right")
    for cls, c in s["classes"].items():
        ok = matches_ground_truth(c) if l2 is None else window_matches(c)
        checked, matches = c.get("source_checked", 0), c.get("source_matches", 0)
        t.add_row(
            cls,
            str(c["ground_truth"]),
            str(c["complete_chains"]),
            str(c.get("merged_chains", 0)),
            str(c["partial_chains"]),
            str(c.get("unacknowledged", 0)),
            "[green]match[/]" if ok else "[red]differs[/]",
            (
                f"[green]{matches}/{checked}[/]"
                if matches == checked
                else f"[red]{matches}/{checked}[/]"
            )
            if checked
            else "",
        )
    parts.append(t)
    if l2 is not None:
        parts.append(_l2_window(l2))
    if s.get("source_mismatches"):
        parts.append(
            Text(
                "source differs from the workload: "
                + "; ".join(
                    f"INTID {m['intid']} vCPU{m['vcpu']}: recorded {m['recorded']},"
                    f" workload {m['workload']} ({m['chains']})"
                    for m in s["source_mismatches"]
                ),
                style="red",
            )
        )
    trace = s.get("output") or "TRACE"
    for cls, slow in (s.get("slowest_chains") or {}).items():
        parts.append(
            Text(
                f"explain the slowest {cls} chain:"
                f" tracekit explain {trace} --chain {slow['chain']}",
                style="dim",
            )
        )
    lat = Table(title="phase latency (timeline ns; 1 instruction = 1 ns)")
    for col in ("class", "phase", "count", "p50", "p95", "max"):
        lat.add_column(col, justify="right" if col in ("count", "p50", "p95", "max") else "left")
    for cls, phases in s["phase_latency_ns"].items():
        for p, st in phases.items():
            lat.add_row(
                cls,
                f"{p} {PHASE_NAMES[p]}",
                str(st["count"]),
                _ns(st["p50"]),
                _ns(st["p95"]),
                _ns(st["max"]),
            )
    parts.append(lat)
    ex = Table(title=f"guest exits ({s['exits']['total']})")
    for col in ("exit code", "ESR class", "handler", "count", "D p50", "D max"):
        ex.add_column(col, justify="right" if col in ("count", "D p50", "D max") else "left")
    for r in s["exits"]["by_reason"]:
        ex.add_row(
            r["exit_code"],
            r["esr_class"],
            r["handler"],
            str(r["count"]),
            _ns(r["d_p50_ns"]),
            _ns(r["d_max_ns"]),
        )
    parts.append(ex)
    busy = Table(title="busiest INTIDs")
    named = any("name" in b for b in s["busiest_intids"])
    for col in ("INTID", "vCPU", "class", "chains", *(("L2's name",) if named else ())):
        busy.add_column(col, justify="right" if col not in ("class", "L2's name") else "left")
    for b in s["busiest_intids"]:
        cells = [str(b["intid"]), str(b["vcpu"]), b["class"], str(b["chains"])]
        busy.add_row(*cells, *((b.get("name", ""),) if named else ()))
    parts.append(busy)
    total = sum(s["time_in_phase_ns"].values()) or 1
    bars = Table(title="where the time goes (sum over chains)", show_header=False, box=None)
    bars.add_column("phase")
    bars.add_column("bar")
    bars.add_column("share", justify="right")
    for p, v in s["time_in_phase_ns"].items():
        n = round(width * v / total)
        bars.add_row(
            f"{p} {PHASE_NAMES[p]}", "█" * n + "·" * (width - n), f"{100 * v / total:.0f}%"
        )
    parts.append(bars)
    if s.get("trace_problems"):
        parts.append(Text("trace problems: " + "; ".join(s["trace_problems"]), style="red"))
    return Group(*parts)


def _l2_window(l2: dict[str, Any]) -> RenderableType:
    """A Linux L2's per-(INTID, vCPU) check: the guest's own count against the
    recording's acknowledgements in the window (and in the snapshots' brackets)."""
    t = Table(
        title=f"L2's /proc/interrupts over the window ({l2['window_ns'] / 1e6:.1f} ms of L1"
        f" timeline; snapshot brackets {l2['brackets_ns'][0] / 1e3:.0f} /"
        f" {l2['brackets_ns'][1] / 1e3:.0f} µs)"
    )
    for col in ("INTID", "vCPU", "L2's name", "class", "guest", "recorded", "in brackets", ""):
        t.add_column(col, justify="left" if col in ("L2's name", "class", "") else "right")
    for r in l2["intids"]:
        exact = r["ok"] and not r["bracketed"]
        verdict = (
            "[green]equal[/]" if exact else "[green]within[/]" if r["ok"] else "[red]differs[/]"
        )
        t.add_row(
            str(r["intid"]) if r["intid"] >= 0 else "?",
            str(r["vcpu"]),
            r["name"],
            r["class"],
            str(r["guest"]),
            str(r["recorded"]),
            str(r["bracketed"]),
            verdict,
        )
    return t

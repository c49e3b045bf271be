"""Rich renderables for ``tracekit explain`` (no I/O: the CLI owns the Console)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tracekit.model.explain import Explanation

__all__ = ["render_explanation", "render_kicks"]

PHASE_STYLE = {"A": "magenta", "B": "red", "C": "yellow", "D": "cyan", "E": "green", "F": "blue"}


def _ns(v: int | None) -> str:
    if v is None:
        return ""
    return f"+{v / 1000:.1f} µs" if v >= 1000 else f"+{v} ns"


def render_explanation(e: Explanation, *, lines_hint: str = "") -> RenderableType:
    c = e.chain
    head = Text.assemble(
        (f"chain #{c['id']}", "bold"),
        f"  INTID {c['intid']} -> vCPU{c['vcpu']}  class {c['class']}  source {c['source']}",
        f"  exit {c.get('exit_reason') or '?'}  list register {c.get('lr')}",
    )
    span = c["ack_ns"] - c["start_ns"]
    sub = Text(
        f"from {c['start_ns']} to the acknowledgement at {c['ack_ns']} ns: {span / 1000:.1f} µs"
        " of L1 timeline (1 instruction = 1 ns)",
        style="dim",
    )
    t = Table(show_lines=False, pad_edge=False)
    for col in ("#", "phase", "L1 CPU", "vCPU", "t (ns)", "since", "function", "what happened"):
        t.add_column(col, justify="right" if col in ("#", "t (ns)", "since") else "left")
    for s in e.steps:
        what = Text(s.what)
        if s.original:
            what.append(f"\n  study note: {s.original}", style="dim italic")
        t.add_row(
            str(s.n),
            Text(s.phase, style=f"bold {PHASE_STYLE.get(s.phase, 'white')}"),
            "" if s.l1_cpu is None else str(s.l1_cpu),
            "" if s.vcpu is None else str(s.vcpu),
            str(s.t_ns),
            _ns(s.dt_ns),
            (s.location or s.function) + (f"\n{s.source_line}" if s.source_line else ""),
            what,
        )
    parts: list[RenderableType] = [head, sub, t]
    for note in e.notes:
        parts.append(Text(note, style="italic"))
    for phase, meaning in e.missing:
        parts.append(Text(f"phase {phase} is missing: {meaning}", style="bold red"))
    if lines_hint:
        parts.append(Text(lines_hint, style="dim"))
    return Group(*parts)


def render_kicks(k: dict[str, Any]) -> RenderableType:
    t = Table(title=f"kvm_vcpu_kick on {k['l1_cpus']} L1 CPU(s): {k['kicks']} kicks")
    for col in ("target vCPU was", "the kick", "count"):
        t.add_column(col, justify="right" if col == "count" else "left")
    for r in k["by_outcome"]:
        t.add_row(r["target"], r["outcome"], str(r["count"]))
    ipis, total = k["ipis_sent"], k["kicks"]
    if k["l1_cpus"] == 1:
        why = (
            "with one L1 CPU the kicker is the only CPU, so the target vCPU cannot be in guest"
            " mode elsewhere: kvm_vcpu_kick only leaves the request (or wakes a halted vCPU),"
            " and the request is seen before the target's next entry."
        )
    else:
        why = (
            "those found the target running in the guest on another L1 CPU and sent a"
            " reschedule SGI to force it out; the others only left a request, seen before"
            " the target's next entry."
        )
    answer = f"{ipis} of {total} kicks sent an IPI: {why}"
    return Group(t, Text(answer))

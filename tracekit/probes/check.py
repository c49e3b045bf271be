"""``tracekit probes check``: every probe of a set against one kernel, before recording (pure).

For each probe: the address it resolves to and how it was found (its symbol, a fallback,
an interior point, a stop-free pointer or frame site), its captures with the struct
members they read, each member's offset and size from the kernel's BTF, and whether the
capture's width fits the member (a ``u8`` read of a 4-byte field reads the wrong byte on
another kernel; a pointer followed through ``[...]`` must be 8 bytes). A required probe
that does not resolve, or a capture that does not fit, is a failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tracekit.errors import ConfigError, SymbolError, TracekitError
from tracekit.kernel.alternatives import running_text
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.probes.capture import TYPES, members_of
from tracekit.probes.resolve import ResolvedProbe, _resolve_one
from tracekit.probes.spec import ProbeSet, ProbeSpec

__all__ = ["CaptureReport", "MemberInfo", "ProbeReport", "check_probes", "failures"]

#: (offset, size) in bytes of a ``struct.member`` path, from the kernel's BTF.
MemberInfo = Callable[[str], tuple[int, int]]
_WIDTH = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "s32": 4}
_NESTED = re.compile(r"\[\s*\[")


@dataclass(frozen=True)
class CaptureReport:
    name: str
    expr: str
    #: (member path, offset, size) in the order the expression reads them.
    members: tuple[tuple[str, int, int], ...]
    problem: str = ""


@dataclass(frozen=True)
class ProbeReport:
    name: str
    phase: str
    role: str
    mode: str
    kvm_modes: tuple[str, ...]
    required: bool
    address: int | None
    location: str
    found_by: str
    captures: tuple[CaptureReport, ...]
    problem: str = ""

    @property
    def failed(self) -> bool:
        return (bool(self.problem) and self.required) or any(c.problem for c in self.captures)


def _found_by(spec: ProbeSpec, probe: ResolvedProbe) -> str:
    parts = [f"fallback {probe.symbol}" if probe.symbol != spec.symbol else "symbol"]
    if spec.after_call:
        parts.append(f"after the bl to {spec.after_call}")
    elif spec.instruction:
        parts.append(f"the {spec.instruction} in {probe.symbol}")
    elif spec.offset:
        parts.append(f"+{spec.offset:#x}")
    if spec.hyp:
        parts.append("EL2 address at run time (VBAR_EL2)")
    for value, pc, offset in probe.pointer_sites:
        what = "frame record store" if value == "frame" else f"{value} = access - {offset:#x}"
        parts.append(f"stop-free {what} at {pc:#x}")
    if probe.skip_entry:
        parts.append("resumes past the patchable entry")
    return "; ".join(parts)


def _capture(name: str, expr: str, member_info: MemberInfo) -> CaptureReport:
    members: list[tuple[str, int, int]] = []
    paths = members_of(expr)
    try:
        for path in paths:
            offset, size = member_info(path)
            members.append((path, offset, size))
    except (SymbolError, KeyError) as exc:
        message = exc.message if isinstance(exc, TracekitError) else str(exc)
        return CaptureReport(name, expr, tuple(members), f"BTF has no {message}")
    type_name = expr.strip().split(" ", 1)[0]
    if type_name not in TYPES or not members:
        return CaptureReport(name, expr, tuple(members))
    width = _WIDTH[type_name]
    *pointers, last = members
    problems = [f"{p} is {s} bytes, followed as a pointer (8)" for p, _, s in pointers if s != 8]
    if last[2] != width:
        problems.append(f"{type_name} reads {width} bytes of {last[0]}, which is {last[2]}")
    if pointers and not _NESTED.search(expr):
        problems.append("several members without a nested [...] load")
    return CaptureReport(name, expr, tuple(members), "; ".join(problems))


def check_probes(
    pset: ProbeSet,
    symbols: SymbolTable,
    image: bytes,
    offset_of: Callable[[str], int],
    member_info: MemberInfo,
) -> list[ProbeReport]:
    """Resolve each probe on its own (one failure does not hide the others)."""
    reports = []
    text = running_text(image, symbols, pset.cpucaps)  # instructions as the kernel runs them
    for spec in pset.probes:
        captures = tuple(_capture(n, e, member_info) for n, e in spec.capture.items())
        head = (spec.name, spec.phase, spec.role, spec.mode, spec.kvm_modes, spec.required)
        try:
            probe, _ = _resolve_one(spec, symbols, text, offset_of, read_values=True)
        except (SymbolError, ConfigError) as exc:
            reports.append(ProbeReport(*head, None, "", "", captures, exc.message))
            continue
        where = (probe.address, probe.location, _found_by(spec, probe))
        reports.append(ProbeReport(*head, *where, captures))
    return reports


def failures(reports: list[ProbeReport]) -> list[str]:
    """One line per failure: a required probe that did not resolve, a capture that does
    not fit its member."""
    out = [f"{r.name}: {r.problem}" for r in reports if r.problem and r.required]
    out += [f"{r.name}.{c.name}: {c.problem}" for r in reports for c in r.captures if c.problem]
    return out

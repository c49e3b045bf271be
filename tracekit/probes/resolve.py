"""Resolve a probe set against one kernel: addresses from kallsyms, offsets from BTF (pure).

A probe whose symbol is absent (inlined) falls back to the first present symbol in its
``fallbacks`` and is reported; a phase left without any probe is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass

from tracekit.errors import SymbolError
from tracekit.kernel.alternatives import RunningText, running_text
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.model.vocabulary import PHASES
from tracekit.probes.capture import to_gdb
from tracekit.probes.info import ProbeInfo
from tracekit.probes.pointer import find_frame_site, find_pointer_site
from tracekit.probes.program import CaptureProgram, compile_capture, world_programs
from tracekit.probes.spec import ProbeSet, ProbeSpec

__all__ = ["ResolvedProbe", "ResolvedProbeSet", "resolve_probes"]

ERET = 0xD69F03E0
NOP = 0xD503201F
HVC0 = 0xD4000002
#: First instructions a ``stop`` probe may resume past without executing them. With
#: CONFIG_DYNAMIC_FTRACE_WITH_REGS every traceable function starts with two NOPs, and
#: ftrace_init_nop() turns the first into ``mov x9, x30`` at boot (arch/arm64/kernel/
#: ftrace.c); x9 is a scratch register only ftrace_caller reads, and the second NOP
#: becomes ``bl ftrace_caller`` only while tracing that function. Skipping the first
#: instruction therefore changes nothing, and it avoids QEMU's single-step over a
#: breakpoint (which hung QEMU 7.2 under -icount here, and flushes translations).
SKIPPABLE = (NOP, 0xAA1E03E9)
#: Longest function body scanned for an interior point (bytes).
SCAN_LIMIT = 0x2000


@dataclass(frozen=True)
class ResolvedProbe:
    spec: ProbeSpec
    address: int
    #: The symbol actually used (the spec's, or a fallback).
    symbol: str
    #: ``func+0x10`` for humans.
    location: str
    #: (capture name, GDB expression), in the spec's order.
    gdb_captures: tuple[tuple[str, str], ...]
    #: A ``stop`` probe on a function's patchable ftrace entry: the debugger resumes at
    #: the next instruction instead of stepping over the breakpoint (see SKIPPABLE).
    skip_entry: bool = False
    #: Added to the address at run time (nVHE hyp code: EL2 VA minus kernel VA).
    hyp_delta: int = 0
    #: A debugger stop (``spec.mode == "stop"``, or inferred values read to check them).
    stops: bool = False
    #: (value name, access pc, offset): pointer arguments recovered stop-free.
    pointer_sites: tuple[tuple[str, int, int], ...] = ()
    #: End of the function's code (the next symbol), for ``frame`` probes: a return
    #: address in [address, code_end) lies in this function.
    code_end: int = 0
    #: Captures the timebase plugin reads at the stamp address (``record
    #: --plugin-values``): the spec's, then what tells host from guest (``@`` names).
    programs: tuple[CaptureProgram, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stamp_address(self) -> int:
        """Where the timebase plugin stamps this probe (the executed instruction)."""
        return self.runtime_address + 4 if self.skip_entry else self.runtime_address

    @property
    def runtime_address(self) -> int:
        """The address the CPU executes (hyp probes: once ``hyp_delta`` is known)."""
        return self.address + self.hyp_delta

    def info(self) -> ProbeInfo:
        """What a recording keeps of it (meta.json, the merge), at its current addresses."""
        spec = self.spec
        return ProbeInfo(
            name=spec.name,
            address=self.stamp_address,
            break_address=self.runtime_address,
            skip_entry=self.skip_entry,
            hyp=spec.hyp,
            location=self.location,
            phase=spec.phase,
            role=str(spec.role),
            mode="stop" if self.stops else "timing",
            infer=dict(spec.infer),
            implies=dict(spec.implies),
            pointers=self.pointer_sites,
            code=(self.runtime_address, self.code_end) if self.code_end else None,
            plugin_values=tuple(c.name for c in self.programs),
        )


@dataclass(frozen=True)
class ResolvedProbeSet:
    probes: tuple[ResolvedProbe, ...]
    #: (probe name, why it was left out) for optional probes that could not be resolved.
    skipped: tuple[tuple[str, str], ...]
    #: Probes that use a fallback symbol: (probe name, fallback used).
    fallbacks_used: tuple[tuple[str, str], ...]

    def by_address(self) -> dict[int, ResolvedProbe]:
        return {p.address: p for p in self.probes}

    def stop_probes(self) -> list[ResolvedProbe]:
        return [p for p in self.probes if p.stops]


def _function_end(symbols: SymbolTable, start: int) -> int:
    following = [s.address for s in symbols if s.address > start]
    return min(following, default=start + SCAN_LIMIT)


def _interior(spec: ProbeSpec, start: int, text: RunningText, symbols: SymbolTable) -> int:
    """The interior point, decoded from the instructions as the kernel runs them; one that
    boot patching leaves undecided (or computes) matches nothing."""
    end = min(_function_end(symbols, start), start + SCAN_LIMIT)
    target = symbols.address(spec.after_call) if spec.after_call else None
    for addr in range(start, end, 4):
        insn = text.instruction(addr)
        if insn is None:
            continue
        if spec.instruction == "eret" and insn == ERET:
            return addr
        if spec.instruction == "after-hvc" and insn == HVC0:
            return addr + 4
        if target is not None and insn & 0xFC000000 == 0x94000000:  # BL imm26
            imm = insn & 0x03FFFFFF
            delta = (imm - (1 << 26) if imm & (1 << 25) else imm) * 4
            if addr + delta == target:
                return addr + 4
    what = f"a bl to {spec.after_call}" if spec.after_call else f"an {spec.instruction}"
    raise SymbolError(
        f"probe {spec.name}: no {what} inside {spec.symbol}",
        hint="the kernel build differs; adjust the probe set",
    )


def _resolve_one(
    spec: ProbeSpec,
    symbols: SymbolTable,
    text: RunningText,
    offset_of: Callable[[str], int],
    read_values: bool = False,
    plugin_values: bool = False,
    kvm_mode: str = "vhe",
) -> tuple[ResolvedProbe, str | None]:
    candidates = (spec.symbol, *spec.fallbacks)
    used = next((s for s in candidates if symbols.has(s)), None)
    if used is None:
        raise SymbolError(
            f"probe {spec.name} (phase {spec.phase}): symbol {spec.symbol} is absent"
            + (
                f" and so are its fallbacks {', '.join(spec.fallbacks)}"
                if spec.fallbacks
                else " (inlined?) and it has no fallback"
            ),
            hint="add a fallback symbol to the probe set",
        )
    addrs = symbols.addresses(used)
    if len(addrs) != 1:
        raise SymbolError(
            f"probe {spec.name}: {used} is ambiguous ({len(addrs)} addresses)",
            hint="use a unique symbol plus an offset",
        )
    addr = addrs[0] + spec.offset
    if spec.after_call or spec.instruction:
        addr = _interior(spec, addrs[0], text, symbols)
    # --plugin-values: the plugin reads what a stop would (and with --read-values what
    # is otherwise inferred, to check it against GDB, which then stops there as before).
    plugin_reads = plugin_values and bool(spec.capture) and (spec.mode == "stop" or read_values)
    stops = (read_values and bool(spec.capture)) if plugin_values else spec.stops(read_values)
    programs = (
        tuple(
            compile_capture(name, expr, offset_of, f"probe {spec.name}: capture.{name}")
            for name, expr in spec.capture.items()
        )
        + world_programs(kvm_mode)
        if plugin_reads
        else ()
    )
    captures = tuple(
        (name, to_gdb(expr, offset_of, f"probe {spec.name}: capture.{name}"))
        for name, expr in spec.capture.items()
        if stops
    )
    skip = (
        stops
        and not (spec.after_call or spec.instruction or spec.offset)
        and text.instruction(addr) in SKIPPABLE
        and text.instruction(addr + 4) == NOP
    )
    sites = tuple(
        (
            value,
            *astuple(
                find_pointer_site(
                    text.candidates,
                    addr,
                    int(reg[1:]),
                    f"probe {spec.name}: pointer.{value}",
                )
            ),
        )
        for value, reg in spec.pointer.items()
    )
    code_end = 0
    if spec.frame:
        site = find_frame_site(text.candidates, addr, f"probe {spec.name}: frame")
        sites = (*sites, ("frame", site.pc, site.offset))
        code_end = _function_end(symbols, addr)
    probe = ResolvedProbe(
        spec,
        addr,
        used,
        symbols.symbolize(addr),
        captures,
        skip,
        stops=stops,
        pointer_sites=sites,
        code_end=code_end,
        programs=programs,
    )
    return probe, (used if used != spec.symbol else None)


def resolve_probes(
    pset: ProbeSet,
    symbols: SymbolTable,
    image: bytes,
    offset_of: Callable[[str], int],
    kvm_mode: str = "vhe",
    *,
    read_values: bool = False,
    plugin_values: bool = False,
) -> ResolvedProbeSet:
    """Resolve every probe; raise SymbolError for a required probe or an uncovered phase.

    Instructions are decoded as the kernel runs them: the Image with the boot-time
    alternatives the probe set's cpucaps decide (tracekit/kernel/alternatives.py).
    """
    text = running_text(image, symbols, pset.cpucaps)
    resolved: list[ResolvedProbe] = []
    skipped: list[tuple[str, str]] = []
    fallbacks: list[tuple[str, str]] = []
    for spec in pset.probes:
        if kvm_mode not in spec.kvm_modes:
            continue
        try:
            probe, fallback = _resolve_one(
                spec, symbols, text, offset_of, read_values, plugin_values, kvm_mode
            )
        except SymbolError as exc:
            if spec.required:
                raise
            skipped.append((spec.name, exc.message))
            continue
        resolved.append(probe)
        if fallback:
            fallbacks.append((spec.name, fallback))
    covered = {p.spec.phase for p in resolved}
    for phase in PHASES:
        if phase not in covered:
            raise SymbolError(
                f"probe set {pset.source} cannot cover phase {phase}: none of its probes "
                "resolved in this kernel",
                hint="add a probe (or a fallback) for that phase",
            )
    seen: dict[int, str] = {}
    for p in resolved:
        for stamp in {p.address, p.stamp_address} - {p.address}:
            if stamp in {q.address for q in resolved}:
                raise SymbolError(
                    f"probe {p.name} is stamped at {stamp:#x}, where another probe sits",
                    hint="move one of them",
                )
        if p.address in seen:
            raise SymbolError(
                f"probes {seen[p.address]} and {p.name} share address {p.address:#x}",
                hint="give each probe its own address",
            )
        seen[p.address] = p.name
    return ResolvedProbeSet(tuple(resolved), tuple(skipped), tuple(fallbacks))

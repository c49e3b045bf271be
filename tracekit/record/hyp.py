"""nVHE: KVM's hyp probes move to their EL2 virtual addresses once L1 has chosen them.

Two ways, the same computation: at the first host debugger stop (GDB reads VBAR_EL2), or,
with plugin-read values (plugin API 4), inside the timebase plugin, which reads VBAR_EL2
at the first host execution of a probe with captures and writes a ``TKH`` line
(tk_timebase.c relocate_hyp): no debugger stop at all. The recorder then reads that line
back (:meth:`HypProbes.adopt_plugin_move`) so the merge knows the EL2 addresses.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tracekit.errors import VMError
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.probes.resolve import ResolvedProbeSet
from tracekit.record.metadata import RunFacts
from tracekit.record.peers import Debugger, StampStream
from tracekit.record.stamps import plugin_probe_file

__all__ = ["HypProbes", "PluginMove", "find_plugin_move"]

_TKH = re.compile(r"TKH (\d+) (\d+) ([0-9a-f]+) (?:([0-9a-f]+) (\d+)|(bad))$")


@dataclasses.dataclass(frozen=True)
class PluginMove:
    """The plugin's ``TKH`` line: VBAR_EL2 as it read it, and what it did with it."""

    vbar_el2: int
    #: VBAR_EL2 - KVA(host vector) modulo 2**64 (the plugin's uint64_t); None: VBAR_EL2
    #: was not the host vector and no probe moved.
    delta: int | None
    #: Probe PCs inside a block translated before the move (they would get no stamp).
    stale: int


def find_plugin_move(log_file: Path) -> PluginMove | None:
    """The first ``TKH`` line of qemu.log (it comes early: read until it)."""
    try:
        with log_file.open(errors="replace") as fh:
            for line in fh:
                if line.startswith("TKH ") and (m := _TKH.match(line.rstrip("\n"))):
                    if m.group(6):
                        return PluginMove(int(m.group(3), 16), None, 0)
                    return PluginMove(int(m.group(3), 16), int(m.group(4), 16), int(m.group(5)))
    except FileNotFoundError:
        return None
    return None


class HypProbes:
    """The probe set of a recording, relocated at the first host stop if it has hyp
    probes (``probes`` is always the current set: the metadata takes it from here)."""

    def __init__(
        self,
        probes: ResolvedProbeSet,
        symbols: SymbolTable,
        host_vector: str,
        stamps: StampStream,
        facts: RunFacts,
        *,
        in_plugin: bool = False,
    ) -> None:
        self.probes = probes
        self._symbols = symbols
        self._host_vector = host_vector
        self._stamps = stamps
        self._facts = facts
        has_hyp = any(p.spec.hyp for p in probes.probes)
        #: The plugin moves them (plugin API 4 with plugin-read values).
        self.in_plugin = in_plugin and has_hyp
        #: Waiting for the first host debugger stop to move them.
        self.pending = has_hyp and not self.in_plugin
        #: Waiting for the first host debugger stop to check the plugin's VBAR_EL2 read
        #: (record --read-values: GDB is the reference).
        self.check_pending = self.in_plugin

    def probe_file(self) -> str:
        """The plugin's probe file for the probes as they stand."""
        vector = self._symbols.address(self._host_vector) if self.in_plugin else None
        return plugin_probe_file(self.probes, vector)

    def check_at_stop(self, debugger: Debugger) -> None:
        """At the first host stop of a recording whose plugin moves the hyp probes: GDB's
        VBAR_EL2, compared with the plugin's at the end (:meth:`adopt_plugin_move`)."""
        self._facts.vbar_el2_gdb = int(debugger.evaluate("(unsigned long)$VBAR_EL2"))
        self.check_pending = False

    def adopt_plugin_move(self, log_file: Path) -> None:
        """The hyp probes at the EL2 addresses the plugin stamped them at (its TKH line).

        :raises VMError: the plugin did not move them, moved them wrongly, or some
            of them lay in code translated before it could (their stamps would be missing).
        """
        if not self.in_plugin:
            return
        move = find_plugin_move(log_file)
        hint = "record with --no-plugin-values (GDB places the hyp probes at a stop)"
        if move is None:
            raise VMError(
                "the plugin never placed the nVHE hyp probes (no TKH line in qemu.log:"
                " no probe with plugin-read values ran in the host)",
                hint=hint,
            )
        vector = self._symbols.address(self._host_vector)
        self._facts.vbar_el2 = move.vbar_el2
        if move.delta is None:
            raise self._not_host_vector(move.vbar_el2, vector, " (read by the plugin)")
        gdb = self._facts.vbar_el2_gdb
        if gdb is not None and gdb != move.vbar_el2:
            raise VMError(f"VBAR_EL2: the plugin read {move.vbar_el2:#x}, GDB {gdb:#x}", hint=hint)
        # As relocate() computes it: a negative delta (EL2 VAs lie below the kernel's),
        # which the plugin's unsigned arithmetic must agree with.
        delta = move.vbar_el2 - vector
        if delta % (1 << 64) != move.delta:
            raise VMError(
                f"the plugin moved the hyp probes by {move.delta:#x}, expected"
                f" {delta % (1 << 64):#x} (VBAR_EL2 {move.vbar_el2:#x})",
                hint=hint,
            )
        self._moved(delta)
        if move.stale:
            raise VMError(
                f"{move.stale} nVHE hyp probes lay in code QEMU translated before the plugin"
                " placed them: their stamps are missing",
                hint=hint,
            )

    def _not_host_vector(self, vbar: int, vector: int, by: str = "") -> VMError:
        return VMError(
            f"VBAR_EL2 {vbar:#x}{by} is not the nVHE host vector"
            f" ({self._host_vector} at {vector:#x})",
            hint="is L1 really in nVHE mode? (kvm-arm.mode=nvhe)",
        )

    def _moved(self, delta: int) -> None:
        self._facts.hyp_va_delta = delta
        self.probes = ResolvedProbeSet(
            tuple(
                dataclasses.replace(p, hyp_delta=delta) if p.spec.hyp else p
                for p in self.probes.probes
            ),
            self.probes.skipped,
            self.probes.fallbacks_used,
        )

    def relocate(self, debugger: Debugger) -> None:
        """Translate nVHE hyp probes to EL2 VAs and have the plugin stamp them.

        Called at the first breakpoint stop in the host, which comes after the VMM created
        its VM (KVM installs its hyp vectors on every CPU then: kvm_arch_hardware_enable ->
        cpu_hyp_reinit; before, VBAR_EL2 holds the hyp stub) and before any vCPU ran.
        While the host runs, VBAR_EL2 holds the EL2 address of
        ``__kvm_nvhe___kvm_hyp_host_vector``; every ``__kvm_nvhe_*`` symbol moves by the
        same delta (the hyp VA is the linear-map alias with a random tag chosen at every
        boot, even with nokaslr: va_layout.c). The probe file is rewritten and QEMU's
        translation cache flushed (a breakpoint insert does), which makes the plugin
        re-read it before any hyp code is translated again.
        """
        vbar = int(debugger.evaluate("(unsigned long)$VBAR_EL2"))
        vector = self._symbols.address(self._host_vector)
        delta = vbar - vector
        if vbar == 0 or (vbar & 0xFFF) != (vector & 0xFFF):
            raise self._not_host_vector(vbar, vector)
        self._facts.vbar_el2 = vbar
        self._moved(delta)
        self._stamps.set_probes(self.probe_file())
        flush_at = next(p.runtime_address for p in self.probes.probes if p.spec.hyp)
        debugger.remove_breakpoint(debugger.insert_breakpoint(flush_at))
        self.pending = False

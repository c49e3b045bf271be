"""nVHE: KVM's hyp probes move to their EL2 virtual addresses once L1 has chosen them."""

from __future__ import annotations

import dataclasses

from tracekit.errors import VMError
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.probes.resolve import ResolvedProbeSet
from tracekit.record.metadata import RunFacts
from tracekit.record.peers import Debugger, StampStream
from tracekit.record.stamps import plugin_probe_file

__all__ = ["HypProbes"]


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
    ) -> None:
        self.probes = probes
        self._symbols = symbols
        self._host_vector = host_vector
        self._stamps = stamps
        self._facts = facts
        self.pending = any(p.spec.hyp for p in probes.probes)

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
            raise VMError(
                f"VBAR_EL2 {vbar:#x} is not the nVHE host vector"
                f" ({self._host_vector} at {vector:#x})",
                hint="is L1 really in nVHE mode? (kvm-arm.mode=nvhe)",
            )
        self._facts.hyp_va_delta = delta
        self._facts.vbar_el2 = vbar
        self.probes = ResolvedProbeSet(
            tuple(
                dataclasses.replace(p, hyp_delta=delta) if p.spec.hyp else p
                for p in self.probes.probes
            ),
            self.probes.skipped,
            self.probes.fallbacks_used,
        )
        self._stamps.set_probes(plugin_probe_file(self.probes))
        flush_at = next(p.runtime_address for p in self.probes.probes if p.spec.hyp)
        debugger.remove_breakpoint(debugger.insert_breakpoint(flush_at))
        self.pending = False

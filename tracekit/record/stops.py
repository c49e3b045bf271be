"""The hot path: one debugger event at a time, each completed hit appended to hits.jsonl
at once (a crash keeps every hit that was read)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TextIO

from tracekit.probes.resolve import ResolvedProbe
from tracekit.record.hyp import HypProbes
from tracekit.record.options import LiveStats
from tracekit.record.peers import DebugEvent, Debugger, Evaluated, Stopped, TargetLost
from tracekit.record.world import world

__all__ = ["StopHandler"]

log = logging.getLogger(__name__)


class StopHandler:
    def __init__(
        self,
        debugger: Debugger,
        by_breakpoint: dict[str, ResolvedProbe],
        thread_cpu: dict[str, int],
        hyp: HypProbes,
        kvm_mode: str,
        stats: LiveStats,
        hits: TextIO,
    ) -> None:
        self._dbg = debugger
        self._by_breakpoint = by_breakpoint
        self._thread_cpu = thread_cpu
        self._hyp = hyp
        self._kvm_mode = kvm_mode
        self._stats = stats
        self._hits = hits
        self._phase_of = {p.name: p.spec.phase for p in hyp.probes.probes}
        self._seq = 0
        #: read_and_resume token -> (the hit being read, the names of its values).
        self._inflight: dict[int, tuple[dict[str, Any], list[str]]] = {}

    def handle(self, event: DebugEvent) -> str | None:
        """Handle one debugger event; return the debugger's message if it lost the target."""
        if isinstance(event, Stopped):
            self._on_stop(event)
        elif isinstance(event, Evaluated):
            if event.token in self._inflight:
                self._on_values(event)
        elif isinstance(event, TargetLost):
            return event.message
        return None

    def _on_stop(self, stop: Stopped) -> None:
        if stop.reason != "breakpoint-hit":
            log.debug("GDB stop (%s); continuing", stop.reason)
            self._dbg.resume()
            return
        probe = self._by_breakpoint.get(stop.breakpoint)
        thread = stop.thread
        cpu = self._thread_cpu.get(thread, int(thread) - 1 if thread.isdigit() else -1)
        if probe is None:
            self._dbg.resume()
            return
        self._stats.stops += 1
        if self._hyp.pending:
            self._hyp.relocate(self._dbg)
        elif self._hyp.check_pending:
            self._hyp.check_at_stop(self._dbg)
        # VHE: the exception level alone tells host from guest (see world.py).
        exprs = [("cpsr", "$cpsr")]
        if self._kvm_mode != "vhe":
            exprs.append(("hcr", "$HCR_EL2"))
        exprs += probe.gdb_captures
        hit: dict[str, Any] = {
            "seq": self._seq,
            "probe": probe.name,
            "cpu": cpu,
            "pc": stop.pc,
            "values": {},
            "errors": {},
            # When the stop arrived: the merge pairs a stamp with the latest stop before
            # it (merge.py _take_hit), against QEMU's timestamped log (same clock).
            "wall": round(time.time(), 6),
        }
        self._seq += 1
        # Resume after the patchable-entry instruction (see probes/resolve.py).
        resume_at = probe.address + 4 if probe.skip_entry else None
        token = self._dbg.read_and_resume([e for _, e in exprs], resume_at)
        self._inflight[token] = (hit, [name for name, _ in exprs])

    def _on_values(self, answer: Evaluated) -> None:
        hit, names = self._inflight.pop(answer.token)
        if answer.values is not None:
            hit["values"].update(zip(names, answer.values, strict=True))
        else:
            hit["values"].update(dict.fromkeys(names))
            hit["errors"].update(dict.fromkeys(names, answer.error))
        self._finish(hit)

    def _finish(self, hit: dict[str, Any]) -> None:
        cpsr = hit["values"].pop("cpsr", None)
        hcr = hit["values"].pop("hcr", None)
        el = (cpsr >> 2) & 3 if isinstance(cpsr, int) else -1
        hit["el"] = el
        if isinstance(cpsr, int):
            # Kept so the merge can tell a hit from another one of the same probe that an
            # interrupt nested between this stop and the plugin's stamp (merge.py).
            hit["cpsr"] = cpsr
        hit["world"] = world(el, hcr, self._kvm_mode)
        hit["host"] = hit["world"] == "l1-host"
        if not hit["errors"]:
            del hit["errors"]
        if hit["host"]:
            self._stats.hits[hit["probe"]] += 1
            phase = self._phase_of.get(hit["probe"])
            if phase:
                self._stats.phases_seen.add(phase)
        else:
            self._stats.discarded += 1
        self._hits.write(json.dumps(hit, separators=(",", ":")) + "\n")
        self._hits.flush()

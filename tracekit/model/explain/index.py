"""The time index over a trace read back, and choosing the chain to explain (pure).

:class:`TraceIndex` sorts the ``.pftrace``'s instants and slices by L1 CPU, vCPU and kind
(probe hits, QEMU's GIC events, "in guest" and exit slices, the chain and phase slices)
so that every step of a walk is a window query on one sorted track. Chains and exits are
the slices holding a row of the chain table (``model/table.py``), read as typed rows.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Sequence

from tracekit.errors import ConfigError
from tracekit.model.meta import RecordingMeta
from tracekit.model.table import CHAIN_ROW, EXIT_ROW, ROW_ARG, ChainRow, ExitRow, phase_of
from tracekit.model.trace import Slice, TraceContent

__all__ = ["PHASE_ORDER", "TraceIndex", "select_chain"]

PHASE_ORDER = "ABCDEF"
_CPU_TRACK = re.compile(r"^L1 CPU(\d+): probe hits$")
_GIC_TRACK = re.compile(r"^GIC CPU i/f (\d+)$")
_VCPU_TRACK = re.compile(r"^L2 vCPU(\d+)$")
#: ExitRow.esr_class of a WFI/WFE trap (the probe sets' ec_handlers 0x01).
_WFX = "WFx"


class TraceIndex:
    """The trace's instants by CPU and kind, sorted by time, for quick window queries."""

    def __init__(self, content: TraceContent) -> None:
        #: The recording's metadata as the trace keeps it (model/table.py reads it).
        self.meta = content.table.meta or RecordingMeta()
        self.probe: dict[int, list[Slice]] = defaultdict(list)
        self.gic: dict[int, list[Slice]] = defaultdict(list)
        self.guest: dict[int, list[Slice]] = defaultdict(list)
        self.in_guest: dict[int, list[Slice]] = defaultdict(list)
        #: Each vCPU's exits (L1 CPU track slices, from the exit to the next entry), and
        #: those that were WFx traps (the slice spans the halt).
        self.exits: dict[int, list[Slice]] = defaultdict(list)
        self.halts: dict[int, list[Slice]] = defaultdict(list)
        for inst in content.instants:
            if m := _CPU_TRACK.match(inst.track):
                self.probe[int(m.group(1))].append(inst)
            elif m := _GIC_TRACK.match(inst.track):
                self.gic[int(m.group(1))].append(inst)
            elif m := _VCPU_TRACK.match(inst.track):
                self.guest[int(m.group(1))].append(inst)
        #: Each chain's slice and its row, by chain id.
        self.chains: dict[int, Slice] = {}
        self.rows: dict[int, ChainRow] = {}
        self.phases: dict[int, dict[str, Slice]] = defaultdict(dict)
        for s in content.slices:
            kind = s.args.get(ROW_ARG)
            if kind is not None:
                self._row(s, kind)
            elif (m := _VCPU_TRACK.match(s.track)) and s.name == "in guest":
                self.in_guest[int(m.group(1))].append(s)
            elif (chain := s.args.get("chain")) is not None and (p := phase_of(s.name)):
                self.phases[int(chain)][p] = s
        for lists in (self.probe, self.gic, self.guest, self.in_guest, self.exits, self.halts):
            for lst in lists.values():
                lst.sort(key=lambda x: x.start)
        self.locations: dict[str, str] = dict(self.meta.probe_locations or {})
        #: location -> file:line (``guest build --debug-info`` before the recording).
        self.lines: dict[str, str] = dict(self.meta.probe_lines or {})

    def _row(self, s: Slice, kind: object) -> None:
        # A row that does not read is left out: read_table reported it as a trace problem.
        try:
            if kind == CHAIN_ROW:
                row = ChainRow.from_args(s.args)
                self.chains[row.id] = s
                self.rows[row.id] = row
            elif kind == EXIT_ROW:
                ex = ExitRow.from_args(s.args)
                if ex.vcpu >= 0:  # an exit of no known vCPU has nothing to explain
                    self.exits[ex.vcpu].append(s)
                    if ex.esr_class == _WFX:
                        self.halts[ex.vcpu].append(s)
        except ValueError:
            return

    def window(self, track: Sequence[Slice], start: int, end: int) -> list[Slice]:
        i = bisect.bisect_left(track, start, key=lambda x: x.start)
        j = bisect.bisect_right(track, end, key=lambda x: x.start)
        return list(track[i:j])

    def cpu_at(self, name: str, t: int) -> int | None:
        """The L1 CPU whose probe ``name`` fired at ``t``."""
        for cpu, track in self.probe.items():
            if any(x.name == name for x in self.window(track, t, t)):
                return cpu
        return None

    def halted(self, vcpu: int, t: int) -> bool:
        """Whether ``vcpu`` was in a WFx exit at ``t`` (handle_exit -> kvm_handle_wfx ->
        kvm_vcpu_halt, until its next entry: the exit slice spans the halt)."""
        return any(s.start <= t < s.end for s in self.window(self.halts.get(vcpu, []), -1, t))

    def running_on(self, vcpu: int, t: int) -> int | None:
        """The L1 CPU running ``vcpu`` in the guest at ``t`` (None: not in guest mode)."""
        for s in self.window(self.in_guest.get(vcpu, []), -1, t):
            if s.start <= t < s.end:
                return int(s.args.get("l1_cpu", -1))
        return None


def select_chain(
    index: TraceIndex, chain: int | None, cls: str | None, nth: int, intid: int | None
) -> int:
    """The chain a user asked for; a bad choice names what exists (ConfigError, exit 2)."""
    rows = index.rows
    ids = sorted(rows)
    if not ids:
        raise ConfigError(
            "the trace has no interrupt chains", hint="record one with `tracekit record`"
        )
    classes = sorted({r.cls for r in rows.values()})
    intids = sorted({r.intid for r in rows.values()})
    listing = f"chains {ids[0]}..{ids[-1]}; classes {', '.join(classes)}"
    if chain is not None:
        if chain not in rows:
            raise ConfigError(
                f"no chain {chain} in the trace ({listing})", hint="pick one of those"
            )
        return chain
    pool = ids
    if cls is not None:
        pool = [i for i in ids if rows[i].cls == cls]
        if not pool:
            raise ConfigError(f"no chain of class {cls!r} in the trace ({listing})")
    if intid is not None:
        pool = [i for i in pool if rows[i].intid == intid]
        if not pool:
            raise ConfigError(
                f"no chain for INTID {intid} in the trace (INTIDs {', '.join(map(str, intids))})"
            )
    complete = [i for i in pool if rows[i].complete] or pool
    if not 1 <= nth <= len(complete):
        raise ConfigError(
            f"--nth {nth} is out of range", hint=f"there are {len(complete)} such chains"
        )
    return complete[nth - 1]

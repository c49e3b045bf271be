"""What the exporter writes on each track: probe hits, GIC events, exits, entries, "in
guest" slices, A–F chains, counters and the trace's first and last instants.

:class:`Exporter` turns what :class:`~tracekit.model.incremental.ChainBuilder` closes into
packets on the tracks of :class:`~tracekit.export.layout.TrackLayout`; the loop that feeds
it is :func:`tracekit.export.perfetto.export_events`.

The annotations of the chain and exit slices are the rows of the chain table
(``model/table.py``: :class:`~tracekit.model.table.ChainRow`, ``ExitRow``) that
``summary`` reads back; the recording instant carries its metadata and schema version.
Other annotations here are for the UI only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import IO, Any

from tracekit.export.layout import TrackLayout
from tracekit.export.wire import TYPE_INSTANT
from tracekit.model.chains import Chain, Entry, Exit, Unacked
from tracekit.model.events import RawEvent
from tracekit.model.l2truth import Window
from tracekit.model.meta import RecordingMeta
from tracekit.model.summary import l2_names
from tracekit.model.table import ChainRow, ExitRow, UnackedRow, meta_args
from tracekit.model.vocabulary import Role, Value
from tracekit.probes.spec import ExitDecoder

__all__ = ["END_MARKER", "PHASE_TITLES", "Exporter"]

#: Name of the instant that closes every trace (export/check.py looks for it).
END_MARKER = "tracekit end of trace"
#: Slice names a user understands without the docs.
PHASE_TITLES = {
    "A": "A source: interrupt raised",
    "B": "B guest exit to EL2",
    "C": "C EL2 -> host kernel",
    "D": "D handle_exit",
    "E": "E inject: flush to list registers",
    "F": "F guest entry",
}
FLOW_BASE = 0x10000
BUCKET_NS = 100_000
_LR_STATES = {0: "invalid", 1: "pending", 2: "active", 3: "pending+active"}
# The roles and value names read here, bound once as plain strings: they are looked up per
# event, and an enum attribute costs ~0.15 µs on Python 3.11 (model/vocabulary.py).
_HANDLE_EXIT = Role.HANDLE_EXIT.value
_ACK, _EOI = Role.ACK.value, Role.EOI.value
_ACK_OR_EOI = frozenset((_ACK, _EOI))
_LR_WRITE, _SGI_GENERATE = Role.LR_WRITE.value, Role.SGI_GENERATE.value
_INTID, _EXIT_CODE, _ESR = Value.INTID.value, Value.EXIT_CODE.value, Value.ESR.value
_LR, _LR_VALUE, _VINTID, _STATE, _HW = (
    Value.LR.value, Value.VALUE.value, Value.VINTID.value, Value.STATE.value, Value.HW.value,
)  # fmt: skip
_SGI, _TARGETLIST = Value.SGI.value, Value.TARGETLIST.value


class Exporter(TrackLayout):
    """Packet content of every track, and release of the buffered tracks."""

    def __init__(
        self, out: IO[bytes], decoder: ExitDecoder, meta: RecordingMeta, kvm_mode: str
    ) -> None:
        super().__init__(out)
        self.instant_rests = self.enc.instant_rests
        self.decoder = decoder
        self.meta = meta
        self.mode = kvm_mode
        self.c_title = PHASE_TITLES["C"] + (
            " (VHE: no EL change, zero length)" if kvm_mode == "vhe" else " (nVHE: eret EL2 -> EL1)"
        )
        #: Creation order of slices and instants (a C-level counter: used per slice).
        self._order = itertools.count(1)
        self.rate: dict[str, list[int]] = {}  # reason -> [track, bucket, count]
        #: Per vCPU, entries that ran the guest and wait for the vCPU's next exit:
        #: [eret_t, l1 cpu, earliest later exit start seen so far or None].
        self.in_guest: dict[int, list[list[Any]]] = {}
        self.describe_cache: dict[
            tuple[int | None, int | None], tuple[str, tuple[str, str, str]]
        ] = {}
        self.meta_written = False
        self.d_titles: dict[tuple[int | None, int | None], str] = {}
        #: A Linux L2's own IRQ names (" (virtio0-req.0)"), shown in chain titles.
        self.l2_names = {
            intid: f" ({name})"
            for intid, name in (l2_names(meta.ground_truth) if meta.l2_window else {}).items()
        }

    def meta_instant(self, t0: int) -> None:
        meta, gt = self.meta, self.meta.ground_truth
        args = {
            **meta_args(meta),
            "scenario": meta.scenario,
            "kvm_mode": self.mode,
            "kernel": meta.kernel_release,
            "qemu": meta.qemu_version,
            "timebase": meta.timebase,
            "ground_truth": json.dumps(gt.per_class() if gt is not None else None),
            "incomplete_reason": meta.incomplete_reason,
        }
        self.sink.add(self.enc.event(t0, TYPE_INSTANT, self.meta_track, "tracekit recording", args))
        self.meta_written = True
        if meta.l2_window is not None:
            self._l2_window(meta.l2_window)

    def _l2_window(self, w: Window) -> None:
        """A Linux L2's measured window (model/l2truth.py): the interval both the guest's
        counts and the summary's cover, and its two brackets (a snapshot's read between
        its marks: an acknowledgement there may or may not be in the guest's count)."""
        nest = self._nest(self.meta_proc, "L2 measured window (the guest's own counts)", 1)
        gt = self.meta.ground_truth
        counted = json.dumps(gt.per_class() if gt is not None else None)
        nest.slice(
            next(self._order),
            w.begin_before,
            w.end_after,
            "L2 measured window",
            {"guest_counts": counted},
            (),
            False,
        )
        for start, end, title in (
            (w.begin_before, w.begin_after, "L2 reads /proc/interrupts (before)"),
            (w.end_before, w.end_after, "L2 reads /proc/interrupts (after)"),
        ):
            nest.slice(next(self._order), start, end, title, {}, (), False)

    def _describe(self, code: int | None, esr: int | None) -> tuple[str, tuple[str, str, str]]:
        """Exit slice title and the decoder's description of the exit (cached)."""
        hit = self.describe_cache.get((code, esr))
        if hit is None:
            described = self.decoder.describe(code, esr)
            name, ec, handler = described
            title_reason = (ec or name) + (f" -> {handler}" if ec else "")
            hit = self.describe_cache[(code, esr)] = (title_reason, described)
        return hit

    def raw(self, ev: RawEvent, running: Mapping[int, int]) -> None:
        """Probe hits, GIC events and the exit-rate counters, straight from the event."""
        cpu = ev.cpu
        cpu_tracks = self.cpu.get(cpu) or self._cpu(cpu)
        if ev.source == "probe":
            values, name, phase = ev.values, ev.name, ev.phase
            # The same key as ``export_events``' inline path.
            key = (cpu, name, phase, *values.items()) if values else (cpu, name, phase)
            # Look up before building the arguments: nearly every probe hit repeats one.
            rest = self.instant_rests.get(key)
            if rest is None:
                pkt = self.enc.new_instant(
                    key, ev.t, cpu_tracks[1], name, {"phase": phase, **values}
                )
            else:
                pkt = self.enc.frame(ev.t, rest)
            self.sink.add(pkt)
            if ev.role == _HANDLE_EXIT:
                self._count_exit(ev)
            return
        if ev.source != "gic":
            return
        vals, role = ev.values, ev.role
        if role in _ACK_OR_EOI:
            v = running.get(ev.cpu, -1)
            if v >= 0:
                what = "acknowledge (ICV_IAR1)" if role == _ACK else "end (ICV_EOIR1)"
                self._vcpu(v).instant(
                    next(self._order),
                    ev.t,
                    f"{what} INTID {vals.get(_INTID)}",
                    {"intid": vals.get(_INTID), "l1_cpu": ev.cpu},
                    (),
                )
        elif role == _LR_WRITE:
            state = _LR_STATES[vals.get(_STATE, 0) & 3]
            self.sink.add(
                self.enc.instant(
                    (ev.cpu, *vals.items()),
                    ev.t,
                    cpu_tracks[3],
                    f"ICH_LR{vals.get(_LR)} <- vINTID {vals.get(_VINTID)} ({state})",
                    {"value": f"{vals.get(_LR_VALUE, 0):#018x}", "hw": vals.get(_HW)},
                )
            )
        elif role == _SGI_GENERATE:
            self.sink.add(
                self.enc.event(
                    ev.t,
                    TYPE_INSTANT,
                    cpu_tracks[3],
                    f"SGI {vals.get(_SGI)} generated",
                    {"targetlist": vals.get(_TARGETLIST)},
                )
            )

    def _d_title(self, code: int | None, esr: int | None) -> str:
        """A chain's D slice title (cached: a few exit kinds repeat)."""
        title = self.d_titles.get((code, esr))
        if title is None:
            _, ec, handler = self.decoder.describe(code, esr)
            title = PHASE_TITLES["D"] + f" ({ec or self.decoder.code_name(code)}"
            title += f" -> {handler})" if handler and ec else ")"
            self.d_titles[(code, esr)] = title
        return title

    def _count_exit(self, ev: RawEvent) -> None:
        """Exits per second by reason in 100 µs buckets, every bucket from the first to
        one past the last (handle_exit events come in time order)."""
        code, ec, _ = self.decoder.describe(ev.values.get(_EXIT_CODE), ev.values.get(_ESR))
        reason = ec or code
        bucket = ev.t // BUCKET_NS
        st = self.rate.get(reason)
        if st is None:
            track = self._track(self.rate_proc, f"exits/s: {reason}", counter=True)
            self.rate[reason] = [track, bucket, 1]
            return
        track, cur, count = st
        if bucket == cur:
            st[2] += 1
            return
        # A counter holds its value until the next sample: the finished bucket's rate,
        # then one zero if empty buckets follow (not one zero per empty bucket: an idle
        # second would otherwise cost 10 000 packets per exit reason).
        self._counter(cur * BUCKET_NS, track, count * 1e9 / BUCKET_NS)
        if bucket > cur + 1:
            self._counter((cur + 1) * BUCKET_NS, track, 0.0)
        st[1], st[2] = bucket, 1

    def _counter(self, ts: int, track: int, value: float) -> None:
        self.sink.add(self.enc.counter(ts, track, value))

    def exit(self, ex: Exit) -> None:
        spans = ex.spans(self.mode)
        start = ex.start
        if start is not None:
            for pend in self.in_guest.get(ex.vcpu, ()):
                if pend[0] < start and (pend[2] is None or start < pend[2]):
                    pend[2] = start
        if not spans:
            return
        nest = self._cpu(ex.cpu)[0]
        reason, described = self._describe(ex.code, ex.esr)
        # The row (B, C and D as seen, wherever D is drawn), then the UI's extras.
        durations = {p: s.end - s.start for p, s in spans.items()}
        args = ExitRow.described(ex, described, durations).to_args()
        d = spans.get("D")
        if d is not None and not ex.d_on_one_cpu and ex.vcpu >= 0:
            # The vCPU's thread slept in its handler (WFI) or migrated: its CPU ran other
            # vCPUs during D, so D goes on the vCPU's own track (the vCPU is out of the
            # guest then) and the CPU's exit slice covers B and C only.
            del spans["D"]
            args["d_l1_cpus"] = f"CPU{ex.handle_cpu} -> CPU{ex.d_cpu}"
            self._vcpu(ex.vcpu).slice(
                next(self._order), d.start, d.end,
                f"{PHASE_TITLES['D']}: {reason} (L1 CPU{ex.handle_cpu} -> CPU{ex.d_cpu})",
                {"vcpu": ex.vcpu, "l1_cpu": ex.handle_cpu, "d_end_l1_cpu": ex.d_cpu,
                 "cpu_taken_ns": None if ex.cpu_taken_t is None else ex.cpu_taken_t - d.start},
                (), True,
            )  # fmt: skip
        if spans:
            first = min(s.start for s in spans.values())
            last = max(s.end for s in spans.values())
        else:
            assert d is not None  # only D was there, and it moved
            first = last = d.start  # no B or C seen: a mark where handle_exit ran
        nest.slice(
            next(self._order),
            first,
            last,
            f"exit vCPU{ex.vcpu}: {reason}",
            args,
            (),
            True,
        )
        for ph in ("B", "C", "D"):
            if ph in spans:
                title = self.c_title if ph == "C" else PHASE_TITLES[ph]
                nest.slice(next(self._order), spans[ph].start, spans[ph].end, title, None, (), True)

    def entry(self, ent: Entry) -> None:
        nest, _, lr_track, _ = self._cpu(ent.cpu)
        end = ent.eret_t or ent.enter_t or ent.flush_t
        lrs = ent.lrs_in_use()
        nest.slice(
            next(self._order),
            ent.flush_t,
            end,
            f"entry vCPU{ent.vcpu}",
            {"vcpu": ent.vcpu, "lrs_in_use": lrs, "entered_guest": ent.eret_t is not None},
            (),
            True,
        )
        nest.slice(
            next(self._order), ent.flush_t, ent.enter_t or ent.flush_t, PHASE_TITLES["E"], None, (),
            True,
        )  # fmt: skip
        if ent.enter_t is not None:
            nest.slice(next(self._order), ent.enter_t, end, PHASE_TITLES["F"], None, (), True)
        self._counter(ent.flush_t, lr_track, float(lrs))
        if ent.vcpu >= 0:
            self._vcpu(ent.vcpu)
        if ent.eret_t is not None and ent.vcpu >= 0:
            self.in_guest.setdefault(ent.vcpu, []).append([ent.eret_t, ent.cpu, None])

    def resolve_in_guest(self, exits_low: int | None) -> None:
        """ "in guest" lasts from an eret to the vCPU's next exit; final once no exit yet
        to close can start before the one found (``None``: end of stream)."""
        for v, pend in self.in_guest.items():
            if not pend:
                continue
            keep = []
            for item in pend:
                eret_t, cpu, nxt = item
                if exits_low is not None and (nxt is None or nxt > exits_low):
                    keep.append(item)
                elif nxt is not None:
                    self.vcpu[v].slice(
                        next(self._order), eret_t, nxt, "in guest", {"l1_cpu": cpu}, (), True
                    )
            pend[:] = keep

    def in_guest_low(self) -> int | None:
        return min((p[0] for pend in self.in_guest.values() for p in pend), default=None)

    def chain(self, chain: Chain) -> None:
        delivery, source = self._chain_tracks((chain.cls, chain.intid, chain.vcpu, chain.source))
        flows = (FLOW_BASE + chain.id,)
        ph = chain.phases
        missing = chain.missing  # a property that walks the phases: once
        args = ChainRow.of(chain).to_args()
        if "A" in ph:
            source.slice(
                next(self._order),
                ph["A"].start,
                ph["A"].end,
                PHASE_TITLES["A"],
                {
                    "chain": chain.id,
                    "source": chain.source,
                    "function": chain.source_function or None,
                    "l1_cpu": chain.source_cpu,
                },
                flows,
                True,
            )
        delivered = [p for p in ("B", "C", "D", "E", "F") if p in ph]
        start = min([ph[p].start for p in delivered] + [chain.ack.t])
        delivery.slice(
            next(self._order),
            start,
            chain.ack.t,
            f"INTID {chain.intid}{self.l2_names.get(chain.intid, '')} -> vCPU{chain.vcpu}"
            f" #{chain.id}" + ("" if not missing else " (partial)"),
            args,
            (),
            False,  # unique per chain: interning would only add bytes
        )
        phase_args = {"chain": chain.id}  # one object: the encoder reuses its bytes
        for p in delivered:
            title = self.c_title if p == "C" else PHASE_TITLES[p]
            if p == "D" and chain.exit is not None:
                title = self._d_title(chain.exit.code, chain.exit.esr)
            delivery.slice(
                next(self._order), ph[p].start, ph[p].end, title, phase_args, flows, True
            )
        delivery.instant(
            next(self._order),
            chain.ack.t,
            f"L2 acknowledges INTID {chain.intid}",
            {"l1_cpu": chain.ack.cpu},
            flows,
        )

    def unacked(self, u: Unacked) -> None:
        """A queue no acknowledgement claimed: an instant at the queue on its vCPU's
        track, carrying its table row (``summary`` counts them per class)."""
        row = UnackedRow.of(u)
        self._vcpu(u.vcpu).instant(next(self._order), u.t, row.title, row.to_args(), ())

    def release(self, low: int) -> None:
        for nest in self.nests:
            nest.release(low)
        self.sink.flush(force=False)

    def finish(self, t_end: int, chains: int, unknown_sources: Mapping[str, int]) -> dict[str, int]:
        self.resolve_in_guest(None)
        self.release(1 << 62)
        for track, cur, count in self.rate.values():
            self._counter(cur * BUCKET_NS, track, count * 1e9 / BUCKET_NS)
            self._counter((cur + 1) * BUCKET_NS, track, 0.0)
        # The last packet: a trace cut short (disk full, a killed export) still parses,
        # with whole chains only; its missing end marker is what tells (tracekit check).
        args = {
            "chains": chains,
            "source_unknown": json.dumps(dict(unknown_sources), sort_keys=True),
        }
        self.sink.add(self.enc.event(t_end, TYPE_INSTANT, self.meta_track, END_MARKER, args))
        self.sink.flush()
        return {"tracks": self.tracks, "events": self.sink.packets - self.tracks}

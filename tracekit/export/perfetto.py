"""Perfetto exporter: exits, entries, A–F chains and GIC events -> a ``.pftrace`` (pure).

Writes through an injected ``IO[bytes]`` with perfetto's streaming builder (one packet at
a time). Output is deterministic for the same input: track uuids come from a counter in a
fixed order and packets are emitted in (timestamp, creation order).

Layout (each group is a synthetic "process" so the UI groups it):

* ``Interrupts: hardware|virtual|ipi``: per source (INTID -> vCPU) a *delivery* track whose
  chain slices contain the B..F phase slices, and a *source* track with the A slices;
  flow arrows link A -> B -> C -> D -> E -> F -> the guest's acknowledgement.
* ``L1 host CPUs``: per CPU the exits (B, C, D) and entries (E, F) of every vCPU, the
  probe hits as instants, and a counter of list registers in use.
* ``L2 guest vCPUs``: per vCPU, "in guest" slices and the acknowledge/EOI instants.
* ``QEMU GICv3``: list-register writes and SGI generation per CPU (hardware view).
* ``Exit rate``: exits per second by reason.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from tracekit.model.chains import Chain, Exit, Reconstruction
from tracekit.model.events import RawEvent
from tracekit.probes.spec import ExitDecoder

__all__ = ["PHASE_TITLES", "export_trace"]

SEQ = 0x7C0DE
#: Slice names a user understands without the docs.
PHASE_TITLES = {
    "A": "A source: interrupt raised",
    "B": "B guest exit to EL2",
    "C": "C EL2 -> host kernel",
    "D": "D handle_exit",
    "E": "E inject: flush to list registers",
    "F": "F guest entry",
}
CLASS_TITLES = {
    "hardware": "Interrupts: hardware (device/timer)",
    "virtual": "Interrupts: virtual (from userspace)",
    "ipi": "Interrupts: IPI (SGI between vCPUs)",
}
FLOW_BASE = 0x10000
BUCKET_NS = 100_000


@dataclass
class _Ev:
    ts: int
    order: int
    track: int
    kind: int
    name: str = ""
    args: Mapping[str, Any] | None = None
    flows: tuple[int, ...] = ()
    terminating: tuple[int, ...] = ()
    value: float | None = None


class _Builder:
    def __init__(self) -> None:
        self.tracks: list[pb.TrackDescriptor] = []
        self.slices: dict[
            int, list[tuple[int, int, int, str, Mapping[str, Any] | None, tuple[int, ...]]]
        ] = defaultdict(list)
        self.points: dict[int, list[_Ev]] = defaultdict(list)
        self._uuid = 0
        self._order = 0

    def _next_uuid(self) -> int:
        self._uuid += 1
        return self._uuid

    def process(self, pid: int, name: str) -> int:
        td = pb.TrackDescriptor()
        td.uuid = self._next_uuid()
        td.process.pid = pid
        td.process.process_name = name
        self.tracks.append(td)
        return int(td.uuid)

    def track(self, parent: int, name: str, *, counter: bool = False, rank: int = 0) -> int:
        td = pb.TrackDescriptor()
        td.uuid = self._next_uuid()
        td.parent_uuid = parent
        td.name = name
        td.sibling_order_rank = rank
        if counter:
            td.counter.unit = pb.CounterDescriptor.UNIT_COUNT
        self.tracks.append(td)
        return int(td.uuid)

    def slice(
        self,
        start: int,
        end: int,
        track: int,
        name: str,
        args: Mapping[str, Any] | None = None,
        flows: tuple[int, ...] = (),
    ) -> None:
        self._order += 1
        self.slices[track].append((start, max(end, start), self._order, name, args, flows))

    def instant(
        self,
        ts: int,
        track: int,
        name: str,
        args: Mapping[str, Any] | None = None,
        terminating: tuple[int, ...] = (),
    ) -> None:
        self._order += 1
        self.points[track].append(
            _Ev(
                ts,
                self._order,
                track,
                pb.TrackEvent.TYPE_INSTANT,
                name,
                args=args,
                terminating=terminating,
            )
        )

    def counter(self, ts: int, track: int, value: float) -> None:
        self._order += 1
        self.points[track].append(
            _Ev(ts, self._order, track, pb.TrackEvent.TYPE_COUNTER, value=value)
        )

    def track_events(self, track: int) -> list[_Ev]:
        """This track's events, properly nested: a sweep over slices with a stack.

        Slices sort by (start, -end): at one start the outer slice opens first. Before a
        slice or point at ``ts``, every open slice that ends before ``ts`` is closed
        (innermost first); slices ending exactly at ``ts`` close after the points at
        ``ts`` (an acknowledgement instant at a chain's end stays inside the chain) and
        before the next slice opens (zero-length slices close at once).
        """
        out: list[_Ev] = []
        stack: list[tuple[int, int]] = []  # (end, order)
        begin, end_t, inst = (
            pb.TrackEvent.TYPE_SLICE_BEGIN,
            pb.TrackEvent.TYPE_SLICE_END,
            pb.TrackEvent.TYPE_INSTANT,
        )
        items: list[tuple[int, int, int, Any]] = []
        for sl in self.slices.get(track, []):
            items.append((sl[0], 1, -sl[1], sl))
        for pt in self.points.get(track, []):
            items.append((pt.ts, 0, pt.order, pt))
        items.sort(
            key=lambda it: (
                it[0],
                it[1],
                it[2],
                getattr(it[3], "order", 0) if it[1] == 0 else it[3][2],
            )
        )

        def close(until: int, inclusive: bool) -> None:
            while stack and (stack[-1][0] < until or (inclusive and stack[-1][0] == until)):
                e, order = stack.pop()
                out.append(_Ev(e, order, track, end_t))

        for ts, is_slice, _, obj in items:
            close(ts, inclusive=bool(is_slice))
            if is_slice:
                start, end, order, name, args, flows = obj
                # A child may not outlive its parent in the UI: clamp to the parent's end.
                if stack and end > stack[-1][0]:
                    end = stack[-1][0]
                out.append(_Ev(start, order, track, begin, name, args=args, flows=flows))
                stack.append((end, order))
            else:
                out.append(obj)
        close(1 << 62, inclusive=True)
        assert all(e.kind != inst or e.track == track for e in out)
        return out


def _annotate(ev: pb.TrackEvent, args: Mapping[str, Any]) -> None:
    for key in sorted(args):
        value = args[key]
        if value is None:
            continue
        d = ev.debug_annotations.add()
        d.name = key
        if isinstance(value, bool):
            d.bool_value = value
        elif isinstance(value, int):
            d.int_value = value
        elif isinstance(value, float):
            d.double_value = value
        else:
            d.string_value = str(value)


def _exit_args(ex: Exit, decoder: ExitDecoder) -> dict[str, Any]:
    code, ec, handler = decoder.describe(ex.code, ex.esr)
    return {
        "l1_cpu": ex.cpu,
        "vcpu": ex.vcpu,
        "exit_code": ex.code,
        "exit_code_name": code,
        "esr": f"{ex.esr:#010x}" if ex.esr is not None and code == "TRAP" else None,
        "esr_class": ec or None,
        "handler": handler or None,
        "vector": ex.vector or None,
    }


def _exit_title(ex: Exit, decoder: ExitDecoder) -> str:
    code, ec, handler = decoder.describe(ex.code, ex.esr)
    return f"exit vCPU{ex.vcpu}: {ec or code}" + (f" -> {handler}" if ec else "")


def export_trace(
    out: IO[bytes],
    recon: Reconstruction,
    events: Iterable[RawEvent],
    decoder: ExitDecoder,
    meta: Mapping[str, Any],
) -> dict[str, int]:
    """Write the whole trace; returns packet counts for the caller's report."""
    evs = sorted(events, key=lambda e: e.t)
    b = _Builder()
    mode = recon.kvm_mode
    c_title = PHASE_TITLES["C"] + (
        " (VHE: no EL change, zero length)" if mode == "vhe" else " (nVHE: eret EL2 -> EL1)"
    )
    t0 = evs[0].t if evs else 0

    # -- metadata ------------------------------------------------------------------------
    meta_proc = b.process(1, "tracekit")
    meta_track = b.track(meta_proc, "recording")
    gt = meta.get("ground_truth")
    b.instant(
        t0,
        meta_track,
        "tracekit recording",
        {
            "tracekit.meta": json.dumps(
                {
                    k: meta.get(k)
                    for k in (
                        "scenario",
                        "count",
                        "vcpus",
                        "machine",
                        "kvm_mode",
                        "kernel_release",
                        "kernel_version",
                        "qemu_version",
                        "timebase",
                        "icount",
                        "ended_by",
                        "incomplete_reason",
                        "ground_truth",
                    )
                },
                sort_keys=True,
            ),
            "scenario": meta.get("scenario"),
            "kvm_mode": mode,
            "kernel": meta.get("kernel_release"),
            "qemu": meta.get("qemu_version"),
            "timebase": meta.get("timebase"),
            "ground_truth": json.dumps(gt.get("per_class") if isinstance(gt, dict) else None),
            "incomplete_reason": meta.get("incomplete_reason"),
        },
    )

    # -- interrupt chains ----------------------------------------------------------------
    keys = sorted(
        {(c.cls, c.intid, c.vcpu, c.source) for c in recon.chains},
        key=lambda k: (
            ["hardware", "virtual", "ipi"].index(k[0])
            if k[0] in ("hardware", "virtual", "ipi")
            else 9,
            k[1],
            k[2],
        ),
    )
    class_proc: dict[str, int] = {}
    delivery: dict[tuple[str, int, int, str], int] = {}
    source_tr: dict[tuple[str, int, int, str], int] = {}
    for rank, key in enumerate(keys):
        cls, intid, vcpu, source = key
        if cls not in class_proc:
            class_proc[cls] = b.process(10 + len(class_proc), CLASS_TITLES.get(cls, cls))
        label = f"INTID {intid} -> vCPU{vcpu} ({source})"
        delivery[key] = b.track(class_proc[cls], label, rank=2 * rank)
        source_tr[key] = b.track(class_proc[cls], f"{label}: source (A)", rank=2 * rank + 1)
    for chain in recon.chains:
        _chain(b, chain, delivery, source_tr, c_title, decoder)

    # -- L1 CPUs ---------------------------------------------------------------------------
    cpus = sorted({e.cpu for e in evs})
    host_proc = b.process(2, "L1 host CPUs (KVM)")
    cpu_track = {c: b.track(host_proc, f"L1 CPU{c}", rank=3 * c) for c in cpus}
    probe_track = {c: b.track(host_proc, f"L1 CPU{c}: probe hits", rank=3 * c + 1) for c in cpus}
    lr_counter = {
        c: b.track(host_proc, f"L1 CPU{c}: list registers in use", counter=True, rank=3 * c + 2)
        for c in cpus
    }
    for ex in recon.exits:
        spans = ex.spans(mode)
        if not spans or ex.cpu not in cpu_track:
            continue
        start = min(s.start for s in spans.values())
        end = max(s.end for s in spans.values())
        tr = cpu_track[ex.cpu]
        exit_args = _exit_args(ex, decoder) | {
            f"phase_{p}_ns": s.duration for p, s in spans.items()
        }
        b.slice(start, end, tr, _exit_title(ex, decoder), exit_args)
        for ph in ("B", "C", "D"):
            if ph in spans:
                title = c_title if ph == "C" else PHASE_TITLES[ph]
                b.slice(spans[ph].start, spans[ph].end, tr, title)
    for ent in recon.entries:
        if ent.cpu not in cpu_track:
            continue
        end = ent.eret_t or ent.enter_t or ent.flush_t
        tr = cpu_track[ent.cpu]
        b.slice(
            ent.flush_t,
            end,
            tr,
            f"entry vCPU{ent.vcpu}",
            {
                "vcpu": ent.vcpu,
                "lrs_in_use": ent.lrs_in_use(),
                "entered_guest": ent.eret_t is not None,
            },
        )
        b.slice(ent.flush_t, ent.enter_t or ent.flush_t, tr, PHASE_TITLES["E"])
        if ent.enter_t is not None:
            b.slice(ent.enter_t, end, tr, PHASE_TITLES["F"])
        b.counter(ent.flush_t, lr_counter[ent.cpu], float(ent.lrs_in_use()))
    for ev in evs:
        if ev.source == "probe" and ev.cpu in probe_track:
            b.instant(
                ev.t,
                probe_track[ev.cpu],
                ev.name,
                {"phase": ev.phase, **ev.values},
            )

    # -- L2 vCPUs ----------------------------------------------------------------------------
    guest_proc = b.process(3, "L2 guest vCPUs")
    vcpus = sorted({e.vcpu for e in recon.entries if e.vcpu >= 0})
    vcpu_track = {v: b.track(guest_proc, f"L2 vCPU{v}", rank=v) for v in vcpus}
    exits_by_vcpu: dict[int, list[int]] = defaultdict(list)
    for ex in recon.exits:
        if ex.start is not None:
            exits_by_vcpu[ex.vcpu].append(ex.start)
    for starts in exits_by_vcpu.values():
        starts.sort()
    for ent in recon.entries:
        if ent.eret_t is None or ent.vcpu not in vcpu_track:
            continue
        nxt = next((t for t in exits_by_vcpu[ent.vcpu] if t > ent.eret_t), None)
        if nxt is not None:
            b.slice(ent.eret_t, nxt, vcpu_track[ent.vcpu], "in guest", {"l1_cpu": ent.cpu})
    gic_proc = b.process(4, "QEMU GICv3 (hardware view)")
    gic_track = {c: b.track(gic_proc, f"GIC CPU i/f {c}", rank=c) for c in cpus}
    running: dict[int, int] = {}
    eret_by_t = {ent.eret_t: ent for ent in recon.entries if ent.eret_t is not None}
    for ev in evs:
        if ev.role == "eret" and ev.t in eret_by_t:
            running[ev.cpu] = eret_by_t[ev.t].vcpu
        if ev.source != "gic":
            continue
        vals = ev.values
        if ev.role in ("ack", "eoi"):
            vt = vcpu_track.get(running.get(ev.cpu, -1))
            if vt is not None:
                what = "acknowledge (ICV_IAR1)" if ev.role == "ack" else "end (ICV_EOIR1)"
                b.instant(
                    ev.t,
                    vt,
                    f"{what} INTID {vals.get('intid')}",
                    {"intid": vals.get("intid"), "l1_cpu": ev.cpu},
                )
        elif ev.role == "lr_write" and ev.cpu in gic_track:
            state = {0: "invalid", 1: "pending", 2: "active", 3: "pending+active"}[
                vals.get("state", 0) & 3
            ]
            b.instant(
                ev.t,
                gic_track[ev.cpu],
                f"ICH_LR{vals.get('lr')} <- vINTID {vals.get('vintid')} ({state})",
                {"value": f"{vals.get('value', 0):#018x}", "hw": vals.get("hw")},
            )
        elif ev.role == "sgi_generate" and ev.cpu in gic_track:
            b.instant(
                ev.t,
                gic_track[ev.cpu],
                f"SGI {vals.get('sgi')} generated",
                {"targetlist": vals.get("targetlist")},
            )

    # -- exit rate counters -----------------------------------------------------------------
    rate_proc = b.process(5, "Exit rate (exits/s by reason)")
    by_reason: dict[str, list[int]] = defaultdict(list)
    for ex in recon.exits:
        if ex.handle_exit_t is not None:
            code, ec, _ = decoder.describe(ex.code, ex.esr)
            by_reason[ec or code].append(ex.handle_exit_t)
    for reason in sorted(by_reason):
        tr = b.track(rate_proc, f"exits/s: {reason}", counter=True)
        buckets: dict[int, int] = defaultdict(int)
        for t in by_reason[reason]:
            buckets[t // BUCKET_NS] += 1
        for k in range(min(buckets), max(buckets) + 2):
            b.counter(k * BUCKET_NS, tr, buckets.get(k, 0) * 1e9 / BUCKET_NS)

    return _write(out, b)


def _chain(
    b: _Builder,
    chain: Chain,
    delivery: Mapping[tuple[str, int, int, str], int],
    source_tr: Mapping[tuple[str, int, int, str], int],
    c_title: str,
    decoder: ExitDecoder,
) -> None:
    key = (chain.cls, chain.intid, chain.vcpu, chain.source)
    flow = FLOW_BASE + chain.id
    ph = chain.phases
    args: dict[str, Any] = {
        "chain": chain.id,
        "class": chain.cls,
        "intid": chain.intid,
        "vcpu": chain.vcpu,
        "source": chain.source,
        "complete": chain.complete,
        "missing": ",".join(chain.missing) or None,
        "exit_reason": chain.exit_reason or None,
        "lr": chain.lr,
        "hw": chain.hw,
        "source_l1_cpu": chain.source_cpu,
        "sender_vcpu": chain.sender_vcpu,
        "sgi1r": f"{chain.sgi1r:#x}" if chain.sgi1r is not None else None,
    }
    for name, span in ph.items():
        args[f"phase_{name}_ns"] = span.duration
    if "A" in ph:
        b.slice(
            ph["A"].start,
            ph["A"].end,
            source_tr[key],
            PHASE_TITLES["A"],
            {"chain": chain.id, "source": chain.source, "l1_cpu": chain.source_cpu},
            flows=(flow,),
        )
    delivered = [p for p in ("B", "C", "D", "E", "F") if p in ph]
    start = min([ph[p].start for p in delivered] + [chain.ack.t])
    tr = delivery[key]
    b.slice(
        start,
        chain.ack.t,
        tr,
        f"INTID {chain.intid} -> vCPU{chain.vcpu} #{chain.id}"
        + ("" if chain.complete else " (partial)"),
        args,
    )
    for p in delivered:
        title = c_title if p == "C" else PHASE_TITLES[p]
        if p == "D" and chain.exit is not None:
            _, ec, handler = decoder.describe(chain.exit.code, chain.exit.esr)
            title += f" ({ec or decoder.code_name(chain.exit.code)}"
            title += f" -> {handler})" if handler and ec else ")"
        b.slice(ph[p].start, ph[p].end, tr, title, {"chain": chain.id}, flows=(flow,))
    b.instant(
        chain.ack.t,
        tr,
        f"L2 acknowledges INTID {chain.intid}",
        {"l1_cpu": chain.ack.cpu},
        terminating=(flow,),
    )


def _write(out: IO[bytes], b: _Builder) -> dict[str, int]:
    builder = StreamingTraceProtoBuilder(out)
    for td in b.tracks:
        pkt = builder.create_packet()
        pkt.track_descriptor.CopyFrom(td)
        builder.write_packet(pkt)
    # Each track's own order is its nesting order; across tracks, a stable merge by time.
    per_track = [b.track_events(td.uuid) for td in b.tracks]
    merged = sorted(
        ((ev.ts, ti, i, ev) for ti, evs in enumerate(per_track) for i, ev in enumerate(evs)),
        key=lambda x: (x[0], x[1], x[2]),
    )
    first = True
    for _, _, _, ev in merged:
        pkt = builder.create_packet()
        pkt.timestamp = ev.ts
        pkt.trusted_packet_sequence_id = SEQ
        if first:
            pkt.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            first = False
        te = pkt.track_event
        te.type = ev.kind
        te.track_uuid = ev.track
        if ev.name:
            te.name = ev.name
        if ev.args:
            _annotate(te, ev.args)
        if ev.flows:
            te.flow_ids.extend(ev.flows)
        if ev.terminating:
            te.terminating_flow_ids.extend(ev.terminating)
        if ev.value is not None:
            te.double_counter_value = ev.value
        builder.write_packet(pkt)
    return {"tracks": len(b.tracks), "events": len(merged)}

"""Read a ``.pftrace`` back with the perfetto protos alone (no native binary).

Checks what a trace must satisfy (every slice begin has its end on its track, every flow
starts and ends) and returns slices, instants and counters with their debug annotations,
and the chain table those annotations hold (``model/table.py`` reads the rows: this
module knows no argument or slice name).

The result is a :class:`ParsedTrace`: the model's :class:`TraceContent` plus the layout a
faithful dump needs (``export/dump.py``) and the model does not: each track's parent,
sibling rank and uuid, and per slice and instant its track uuid, file position and flows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.errors import TraceFileError
from tracekit.model.table import read_table
from tracekit.model.trace import Slice, TraceContent

__all__ = [
    "ParsedTrace",
    "Placement",
    "Slice",
    "TraceContent",
    "TrackInfo",
    "parse_trace",
    "read_trace",
]


@dataclass(frozen=True)
class TrackInfo:
    """A track descriptor as written (``TraceContent.tracks`` keeps only its name)."""

    name: str
    parent: int | None  # uuid of the parent track (a group's process track), if any
    rank: int  # sibling_order_rank: the order the exporter wants among siblings
    process: bool  # a process track: what TraceContent.groups lists
    counter: bool


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a slice or instant was in the file (``Slice.track`` is a name, which two
    tracks may share)."""

    uuid: int  # its track's uuid
    packet: int  # index of its (begin) packet: the file order, which on one track nests
    flows: tuple[int, ...]  # flow ids it starts or continues (on a slice: its begin)
    terminating: tuple[int, ...]  # flow ids it ends


@dataclass
class ParsedTrace(TraceContent):
    """``TraceContent`` plus layout; ``slice_places[i]`` belongs to ``slices[i]`` and
    ``instant_places[i]`` to ``instants[i]``."""

    track_info: dict[int, TrackInfo] = field(default_factory=dict)
    slice_places: list[Placement] = field(default_factory=list)
    instant_places: list[Placement] = field(default_factory=list)
    #: Counter track name (the key of ``counters``) -> its uuid.
    counter_uuids: dict[str, int] = field(default_factory=dict)


def _args(ev: pb.TrackEvent, keys: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in ev.debug_annotations:
        kind = d.WhichOneof("value")
        name = d.name if d.HasField("name") else keys.get(d.name_iid, f"#{d.name_iid}")
        out[name] = getattr(d, kind) if kind else None
    return out


def parse_trace(data: bytes, source: str = "trace") -> ParsedTrace:
    trace = pb.Trace()
    try:
        trace.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise TraceFileError(
            f"{source} is not a readable Perfetto trace ({exc})",
            hint="is it truncated or another format? re-export it with `tracekit export`",
        ) from None
    if not trace.packet:
        raise TraceFileError(
            f"{source} holds no trace packets", hint="pass a .pftrace written by `tracekit record`"
        )
    content = ParsedTrace(packets=len(trace.packet), source=source)
    open_slices: dict[int, list[tuple[str, int, dict[str, Any], Placement]]] = defaultdict(list)
    # Interned event and annotation names (the exporter writes one sequence).
    names: dict[int, str] = {}
    keys: dict[int, str] = {}
    for index, pkt in enumerate(trace.packet):
        if pkt.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
            names.clear()
            keys.clear()
        if pkt.HasField("interned_data"):
            for en in pkt.interned_data.event_names:
                names[en.iid] = en.name
            for dn in pkt.interned_data.debug_annotation_names:
                keys[dn.iid] = dn.name
        if pkt.HasField("track_descriptor"):
            td = pkt.track_descriptor
            if td.HasField("process"):
                content.groups[td.uuid] = td.process.process_name
                content.tracks[td.uuid] = td.process.process_name
            else:
                content.tracks[td.uuid] = td.name
            content.track_info[td.uuid] = TrackInfo(
                content.tracks[td.uuid],
                td.parent_uuid if td.HasField("parent_uuid") else None,
                td.sibling_order_rank,
                td.HasField("process"),
                td.HasField("counter"),
            )
            continue
        if not pkt.HasField("track_event"):
            continue
        ev = pkt.track_event
        name = ev.name if ev.HasField("name") else names.get(ev.name_iid, "")
        track = content.tracks.get(ev.track_uuid)
        if track is None:
            content.problems.append(f"event on undeclared track {ev.track_uuid}")
            continue
        content.flows_started.update(ev.flow_ids)
        content.flows_terminated.update(ev.terminating_flow_ids)
        place = Placement(ev.track_uuid, index, tuple(ev.flow_ids), tuple(ev.terminating_flow_ids))
        if ev.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            open_slices[ev.track_uuid].append((name, pkt.timestamp, _args(ev, keys), place))
        elif ev.type == pb.TrackEvent.TYPE_SLICE_END:
            stack = open_slices[ev.track_uuid]
            if not stack:
                content.problems.append(f"slice end without begin on {track!r}")
                continue
            begin_name, start, args, begun = stack.pop()
            if pkt.timestamp < start:
                content.problems.append(f"slice {begin_name!r} ends before it begins")
            content.slices.append(Slice(track, begin_name, start, pkt.timestamp, args, len(stack)))
            # Flows ending on the end event (the exporter puts none there) still count.
            if place.flows or place.terminating:
                begun = Placement(
                    begun.uuid,
                    begun.packet,
                    begun.flows + place.flows,
                    begun.terminating + place.terminating,
                )
            content.slice_places.append(begun)
        elif ev.type == pb.TrackEvent.TYPE_INSTANT:
            content.instants.append(
                Slice(
                    track,
                    name,
                    pkt.timestamp,
                    pkt.timestamp,
                    _args(ev, keys),
                    len(open_slices[ev.track_uuid]),
                )
            )
            content.instant_places.append(place)
        elif ev.type == pb.TrackEvent.TYPE_COUNTER:
            value = (
                ev.double_counter_value
                if ev.HasField("double_counter_value")
                else float(ev.counter_value)
            )
            content.counters.setdefault(track, []).append((pkt.timestamp, value))
            content.counter_uuids.setdefault(track, ev.track_uuid)
    for uuid, stack in open_slices.items():
        for open_name, _, _, _ in stack:
            content.problems.append(f"slice {open_name!r} on {content.tracks[uuid]!r} never ends")
    content.table, problems = read_table(
        (i.args for i in content.instants), (s.args for s in content.slices)
    )
    content.problems.extend(problems)
    return content


def read_trace(path: Path) -> ParsedTrace:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TraceFileError(f"trace file {path} does not exist") from None
    except OSError as exc:
        raise TraceFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_trace(data, str(path))

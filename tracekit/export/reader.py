"""Read a ``.pftrace`` back with the perfetto protos alone (no native binary).

Checks what a trace must satisfy (every slice begin has its end on its track, every flow
starts and ends) and returns slices, instants and counters with their debug annotations.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.errors import TraceFileError
from tracekit.model.trace import Slice, TraceContent

__all__ = ["Slice", "TraceContent", "parse_trace", "read_trace"]


def _args(ev: pb.TrackEvent, keys: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in ev.debug_annotations:
        kind = d.WhichOneof("value")
        name = d.name if d.HasField("name") else keys.get(d.name_iid, f"#{d.name_iid}")
        out[name] = getattr(d, kind) if kind else None
    return out


def parse_trace(data: bytes, source: str = "trace") -> TraceContent:
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
    content = TraceContent(packets=len(trace.packet))
    open_slices: dict[int, list[tuple[str, int, dict[str, Any]]]] = defaultdict(list)
    # Interned event and annotation names (the exporter writes one sequence).
    names: dict[int, str] = {}
    keys: dict[int, str] = {}
    for pkt in trace.packet:
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
        if ev.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            open_slices[ev.track_uuid].append((name, pkt.timestamp, _args(ev, keys)))
        elif ev.type == pb.TrackEvent.TYPE_SLICE_END:
            stack = open_slices[ev.track_uuid]
            if not stack:
                content.problems.append(f"slice end without begin on {track!r}")
                continue
            begin_name, start, args = stack.pop()
            if pkt.timestamp < start:
                content.problems.append(f"slice {begin_name!r} ends before it begins")
            content.slices.append(Slice(track, begin_name, start, pkt.timestamp, args, len(stack)))
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
        elif ev.type == pb.TrackEvent.TYPE_COUNTER:
            value = (
                ev.double_counter_value
                if ev.HasField("double_counter_value")
                else float(ev.counter_value)
            )
            content.counters.setdefault(track, []).append((pkt.timestamp, value))
    for uuid, stack in open_slices.items():
        for open_name, _, _ in stack:
            content.problems.append(f"slice {open_name!r} on {content.tracks[uuid]!r} never ends")
    return content


def read_trace(path: Path) -> TraceContent:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TraceFileError(f"trace file {path} does not exist") from None
    except OSError as exc:
        raise TraceFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_trace(data, str(path))

"""Hand-encoded packets parse back with the perfetto protos into exactly what building the
same packet as a protobuf object gives."""

from __future__ import annotations

from typing import Any

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.export.wire import PacketEncoder, varint

pytestmark = pytest.mark.unit

CASES: list[dict[str, Any]] = [
    {"ts": 5, "kind": 3, "track": 7, "name": "probe", "args": {"phase": "A", "vcpu": 1}},
    {"ts": 2**40, "kind": 1, "track": 300, "name": "probe", "args": {"vcpu": 2, "x": None}},
    {"ts": 9, "kind": 1, "track": 1, "name": "INTID 27 #3", "intern_name": False,
     "args": {"complete": True, "neg": -5, "d": 1.5, "s": "ünï", "f": False}, "flows": (70000,)},
    {"ts": 10, "kind": 3, "track": 1, "name": "ack", "terminating": (70000, 2**63 + 1)},
    {"ts": 11, "kind": 4, "track": 2, "value": 12.25},
    {"ts": 12, "kind": 4, "track": 2, "value": 0.0},
]  # fmt: skip


def _expected(case: dict[str, Any], names: dict[str, int], keys: dict[str, int]) -> pb.TracePacket:
    pkt = pb.TracePacket()
    pkt.timestamp = case["ts"]
    pkt.trusted_packet_sequence_id = 42
    pkt.sequence_flags = 1 if not names and not keys else 2
    te = pkt.track_event
    te.type = case["kind"]
    te.track_uuid = case["track"]
    name = case.get("name", "")
    if name and case.get("intern_name", True):
        if name not in names:
            names[name] = len(names) + 1
            en = pkt.interned_data.event_names.add()
            en.iid, en.name = names[name], name
        te.name_iid = names[name]
    elif name:
        te.name = name
    for key in sorted(case.get("args", {})):
        value = case["args"][key]
        if value is None:
            continue
        if key not in keys:
            keys[key] = len(keys) + 1
            dn = pkt.interned_data.debug_annotation_names.add()
            dn.iid, dn.name = keys[key], key
        d = te.debug_annotations.add()
        d.name_iid = keys[key]
        if isinstance(value, bool):
            d.bool_value = value
        elif isinstance(value, int):
            d.int_value = value
        elif isinstance(value, float):
            d.double_value = value
        else:
            d.string_value = value
    te.flow_ids.extend(case.get("flows", ()))
    te.terminating_flow_ids.extend(case.get("terminating", ()))
    if "value" in case:
        te.double_counter_value = case["value"]
    return pkt


def test_packets_decode_as_the_protobuf_path_builds_them() -> None:
    enc = PacketEncoder(42)
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    data = b""
    expected = pb.Trace()
    for case in CASES:
        exp = _expected(case, names, keys)
        expected.packet.append(exp)
        data += enc.event(
            case["ts"],
            case["kind"],
            case["track"],
            case.get("name", ""),
            case.get("args"),
            intern_name=case.get("intern_name", True),
            flows=case.get("flows", ()),
            terminating=case.get("terminating", ()),
            value=case.get("value"),
        )
    end = expected.packet.add()
    end.timestamp, end.trusted_packet_sequence_id, end.sequence_flags = 99, 42, 2
    end.track_event.type, end.track_event.track_uuid = 2, 300
    data += enc.end(99, 300)
    got = pb.Trace.FromString(data)
    assert list(got.packet) == list(expected.packet)


@pytest.mark.parametrize("v", [0, 1, 127, 128, 300, 2**35 + 7, 2**64 - 1, -1, -(2**63)])
def test_varint_matches_protobuf(v: int) -> None:
    msg = pb.DebugAnnotation(int_value=v) if v < 2**63 else pb.DebugAnnotation(uint_value=v)
    tag = b"\x20" if v < 2**63 else b"\x18"
    assert msg.SerializeToString() == tag + varint(v)

"""Hand-encoded Perfetto ``TracePacket``s for the exporter's hot path (pure).

Building a Python protobuf object costs microseconds per packet; the few packets the
exporter writes by the million (TrackEvent slice begin/end, instant, counter) have a fixed
layout, so they are written straight in the protobuf wire format: varints and
length-delimited fields, each packet framed as ``Trace.packet`` (field 1) so the file is a
``Trace``. Event names and debug-annotation names are interned (``interned_data`` with
``name_iid`` / ``debug_annotation_name_iid``): the first packet of the sequence sets
``SEQ_INCREMENTAL_STATE_CLEARED``, later ones ``SEQ_NEEDS_INCREMENTAL_STATE``.
``tests/unit/test_wire.py`` parses every kind back with ``perfetto_trace_pb2``.

Field numbers (perfetto/protos/perfetto/trace/...): TracePacket timestamp 8,
trusted_packet_sequence_id 10, track_event 11, interned_data 12, sequence_flags 13;
TrackEvent debug_annotations 4, type 9, name_iid 10, track_uuid 11, name 23,
double_counter_value 44, flow_ids 47, terminating_flow_ids 48 (fixed64); DebugAnnotation
name_iid 1, bool 2, int 4, double 5, string 6; InternedData event_names 2,
debug_annotation_names 3 (iid 1, name 2).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

__all__ = ["PacketEncoder", "framed", "varint"]

_TABLE = [bytes((i,)) if i < 0x80 else bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(0x4000)]
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack

TYPE_SLICE_BEGIN = 1
TYPE_SLICE_END = 2
TYPE_INSTANT = 3
TYPE_COUNTER = 4
SEQ_INCREMENTAL_STATE_CLEARED = 1
SEQ_NEEDS_INCREMENTAL_STATE = 2


def varint(v: int) -> bytes:
    """Unsigned LEB128; negative int64 values as their 64-bit two's complement."""
    # Unrolled for the common sizes (lengths, iids, timestamps up to 2**35 ns).
    if 0 <= v < 0x4000:
        return _TABLE[v]
    if 0 < v < 0x8_0000_0000:
        if v < 0x20_0000:
            return bytes(((v & 0x7F) | 0x80, ((v >> 7) & 0x7F) | 0x80, v >> 14))
        if v < 0x1000_0000:
            return bytes(
                ((v & 0x7F) | 0x80, ((v >> 7) & 0x7F) | 0x80, ((v >> 14) & 0x7F) | 0x80, v >> 21)
            )
        return bytes(
            (
                (v & 0x7F) | 0x80,
                ((v >> 7) & 0x7F) | 0x80,
                ((v >> 14) & 0x7F) | 0x80,
                ((v >> 21) & 0x7F) | 0x80,
                v >> 28,
            )
        )
    if v < 0:
        v &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + varint(len(payload)) + payload


#: For a 14-bit value: its two low varint bytes, both with the continuation bit (a value
#: >= 2**14 is these two bytes followed by the varint of ``value >> 14``).
_LOW14 = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(0x4000)]
#: For a packet body length n < 2**14: ``Trace.packet`` tag, varint(n), and the timestamp
#: tag that every body here starts with.
_HEAD = [b"\x0a" + _TABLE[n] + b"\x40" for n in range(0x4000)]
#: Bodies up to this size (without the timestamp) take the table-driven framing.
_SMALL = 0x4000 - 16


class PacketEncoder:
    """Encodes TrackEvent packets of one trusted sequence, interning names as it goes.

    Cost per packet is what bounds the exporter, so the hot methods assemble bytes from
    cached pieces: the timestamp is the only part computed per packet (its bits above the
    low 14 repeat for 16 µs of trace, so they are cached), the frame head comes from a
    table indexed by the body length, and everything after the timestamp is cached per
    kind of packet where it repeats (instants, slice ends, counter values).
    """

    def __init__(self, sequence_id: int) -> None:
        seq = b"\x50" + varint(sequence_id)
        self._first_prefix = seq + b"\x68" + varint(SEQ_INCREMENTAL_STATE_CLEARED)
        self._prefix = seq + b"\x68" + varint(SEQ_NEEDS_INCREMENTAL_STATE)
        self._first = True
        self._names: dict[str, bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._kind_track: dict[tuple[int, int], bytes] = {}
        #: Repeating instants: caller's key -> what follows the timestamp (prefix and the
        #: encoded ``track_event``); public so that a caller can look up before building
        #: the instant's arguments, and frame a hit with ``frame``.
        self.instant_rests: dict[Any, bytes] = {}
        self._end_tails: dict[int, bytes] = {}
        self._counter_tails: dict[tuple[int, float], bytes] = {}
        #: (annotation name, value, type) -> the encoded DebugAnnotation field.
        self._pairs: dict[tuple[str, Any, type], bytes] = {}
        #: Annotation name -> int value -> encoded DebugAnnotation (ints are most values;
        #: no tuple key to build).
        self._int_pairs: dict[str, dict[int, bytes]] = {}
        #: ``ts >> 14`` -> its varint (timestamps of one stretch of trace share it).
        self._ts_high: dict[int, bytes] = {}
        #: (track, name) -> what follows the timestamp in a slice begin without arguments.
        self._bare: dict[tuple[int, str], bytes] = {}
        self._last_args: Mapping[str, Any] | None = None
        self._last_encoded = b""

    def frame(self, ts: int, rest: bytes) -> bytes:
        """A framed packet: timestamp, then ``rest`` (prefix and fields, already encoded)."""
        if ts >= 0x4000:
            high = self._ts_high.get(ts >> 14)
            if high is None:
                if len(self._ts_high) > 4096:  # bounded: time only moves forward
                    self._ts_high.clear()
                high = self._ts_high[ts >> 14] = varint(ts >> 14)
            tv = _LOW14[ts & 0x3FFF] + high
        else:
            tv = _TABLE[ts] if ts >= 0 else varint(ts)
        n = len(rest)
        if n < _SMALL:
            return _HEAD[1 + len(tv) + n] + tv + rest
        body = b"\x40" + tv + rest
        return b"\x0a" + varint(len(body)) + body

    @staticmethod
    def _intern(
        table: dict[str, bytes], text: str, interned: list[bytes], field: bytes, ref: bytes
    ) -> bytes:
        """The encoded reference to ``text`` (``ref`` + iid); a new string also goes into
        this packet's InternedData ``field`` as ``{iid, name}``."""
        enc = table.get(text)
        if enc is None:
            iid = varint(len(table) + 1)
            interned.append(_ld(field, b"\x08" + iid + _ld(b"\x12", text.encode())))
            enc = table[text] = ref + iid
        return enc

    def _name(self, name: str, interned: list[bytes]) -> bytes:
        # InternedData.event_names (2) -> TrackEvent.name_iid (10).
        return self._intern(self._names, name, interned, b"\x12", b"\x50")

    def _key(self, key: str, interned: list[bytes]) -> bytes:
        # InternedData.debug_annotation_names (3) -> DebugAnnotation.name_iid (1).
        return self._intern(self._keys, key, interned, b"\x1a", b"\x08")

    def _annotations(self, args: Mapping[str, Any], interned: list[bytes]) -> bytes:
        parts = []
        int_pairs = self._int_pairs
        for key in sorted(args):
            value = args[key]
            if value is None:
                continue
            if value.__class__ is int:
                per_key = int_pairs.get(key)
                if per_key is None:
                    per_key = int_pairs[key] = {}
                enc = per_key.get(value)
                if enc is None:
                    if len(per_key) > 10_000:  # bounded: values that never repeat
                        per_key.clear()
                    enc = per_key[value] = self._pair(key, value, interned)
            else:
                # True == 1 as a dict key: the type keeps a bool from reusing an int's bytes.
                ck = (key, value, value.__class__)
                enc = self._pairs.get(ck)
                if enc is None:
                    if len(self._pairs) > 100_000:  # bounded: values that never repeat
                        self._pairs.clear()
                    enc = self._pairs[ck] = self._pair(key, value, interned)
            parts.append(enc)
        return b"".join(parts)

    def _pair(self, key: str, value: Any, interned: list[bytes]) -> bytes:
        """One encoded DebugAnnotation (interning its name on first use)."""
        head = self._key(key, interned)
        if value is True or value is False:
            body = head + (b"\x10\x01" if value else b"\x10\x00")
        elif isinstance(value, int):
            body = head + b"\x20" + varint(value)
        elif isinstance(value, float):
            body = head + b"\x29" + _pack_double(value)
        else:
            body = head + _ld(b"\x32", str(value).encode())
        return b"\x22" + varint(len(body)) + body

    def event(
        self,
        ts: int,
        kind: int,
        track: int,
        name: str = "",
        args: Mapping[str, Any] | None = None,
        *,
        intern_name: bool = True,
        flows: tuple[int, ...] = (),
        terminating: tuple[int, ...] = (),
        value: float | None = None,
    ) -> bytes:
        """One framed ``Trace.packet`` holding a TrackEvent."""
        interned: list[bytes] = []
        te = self._track_event(kind, track, name, args, intern_name, flows, interned)
        for f in terminating:
            te += b"\x81\x03" + _pack_fixed64(f)
        if value is not None:
            te += b"\xe1\x02" + _pack_double(value)
        return self._packet(ts, interned, b"\x5a" + varint(len(te)) + te)

    def _track_event(
        self,
        kind: int,
        track: int,
        name: str,
        args: Mapping[str, Any] | None,
        intern_name: bool,
        flows: tuple[int, ...],
        interned: list[bytes],
    ) -> bytes:
        """TrackEvent fields up to the flow ids."""
        kt = self._kind_track.get((kind, track))
        if kt is None:
            kt = self._kind_track[(kind, track)] = b"\x48" + varint(kind) + b"\x58" + varint(track)
        te = kt
        if name:
            if intern_name:
                te += self._names.get(name) or self._name(name, interned)
            else:
                te += _ld(b"\xba\x01", name.encode())
        if args:
            # Consecutive packets often carry the same arguments object (a chain's phase
            # slices): encode it once. The reference held here keeps its id from reuse.
            if args is self._last_args:
                te += self._last_encoded
            else:
                enc = self._annotations(args, interned)
                self._last_args, self._last_encoded = args, enc
                te += enc
        for f in flows:
            te += b"\xf9\x02" + _pack_fixed64(f)
        return te

    def _packet(self, ts: int, interned: list[bytes], tail: bytes) -> bytes:
        if self._first:
            self._first = False
            prefix = self._first_prefix
        else:
            prefix = self._prefix
        if interned:
            return self.frame(ts, prefix + _ld(b"\x62", b"".join(interned)) + tail)
        return self.frame(ts, prefix + tail)

    def begin(
        self,
        ts: int,
        track: int,
        name: str,
        args: Mapping[str, Any] | None,
        flows: tuple[int, ...],
        intern_name: bool,
    ) -> bytes:
        """A slice begin: ``event(ts, TYPE_SLICE_BEGIN, ...)`` without keyword handling;
        a slice with only a track and an interned name is encoded once."""
        bare = args is None and not flows and intern_name
        if bare:
            rest = self._bare.get((track, name))
            if rest is not None and not self._first:
                return self.frame(ts, rest)
        interned: list[bytes] = []
        te = self._track_event(TYPE_SLICE_BEGIN, track, name, args, intern_name, flows, interned)
        tail = b"\x5a" + varint(len(te)) + te
        if bare:
            if len(self._bare) > 10_000:  # bounded: names that never repeat
                self._bare.clear()
            self._bare[(track, name)] = self._prefix + tail
        return self._packet(ts, interned, tail)

    def instant(self, key: Any, ts: int, track: int, name: str, args: Mapping[str, Any]) -> bytes:
        """An instant whose track, name and arguments repeat (probe hits, GIC events):
        ``key`` (hashable, standing for all three) finds their bytes encoded once."""
        rest = self.instant_rests.get(key)
        if rest is not None:
            return self.frame(ts, rest)
        return self.new_instant(key, ts, track, name, args)

    def new_instant(
        self, key: Any, ts: int, track: int, name: str, args: Mapping[str, Any]
    ) -> bytes:
        """``instant`` for a key not cached yet (callers with their own fast path)."""
        interned: list[bytes] = []
        te = (
            b"\x48" + varint(TYPE_INSTANT) + b"\x58" + varint(track)
            + self._name(name, interned) + self._annotations(args, interned)
        )  # fmt: skip
        tail = b"\x5a" + varint(len(te)) + te
        if len(self.instant_rests) > 100_000:  # bounded: arguments that never repeat
            self.instant_rests.clear()
        self.instant_rests[key] = self._prefix + tail
        return self._packet(ts, interned, tail)

    def counter(self, ts: int, track: int, value: float) -> bytes:
        """A counter value; values repeat (list registers in use), so each (track, value)
        is encoded once."""
        rest = self._counter_tails.get((track, value))
        if rest is not None and not self._first:
            return self.frame(ts, rest)
        pkt = self.event(ts, TYPE_COUNTER, track, value=value)
        if len(self._counter_tails) > 10_000:  # bounded: rates that never repeat
            self._counter_tails.clear()
        te = b"\x48\x04\x58" + varint(track) + b"\xe1\x02" + _pack_double(value)
        self._counter_tails[(track, value)] = self._prefix + b"\x5a" + varint(len(te)) + te
        return pkt

    def end(self, ts: int, track: int) -> bytes:
        """A slice end: the most frequent packet, so its bytes are assembled directly."""
        return self.frame(ts, self.end_rest(track))

    def end_rest(self, track: int) -> bytes:
        """What follows the timestamp in a slice end on ``track`` (for ``frame``)."""
        rest = self._end_tails.get(track)
        if rest is None:
            kt = b"\x48\x02\x58" + varint(track)
            rest = self._end_tails[track] = self._prefix + b"\x5a" + varint(len(kt)) + kt
        return rest


def framed(packet_bytes: bytes) -> bytes:
    """An already serialized TracePacket (e.g. a track descriptor) as ``Trace.packet``."""
    return _ld(b"\x0a", packet_bytes)

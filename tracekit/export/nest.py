"""Per-track nesting and release of buffered packets, for the streaming exporter.

:class:`Nest` holds one track's slices and instants until nothing that sorts before them
can still arrive, then writes them in the order a full sort would give, so that the
output is deterministic without holding the trace; :class:`Sink` gathers the encoded
packets and writes them to the output in large chunks.
"""

from __future__ import annotations

from typing import IO, Any

from tracekit.export.wire import TYPE_INSTANT, PacketEncoder

__all__ = ["WRITE_PACKETS", "Nest", "Sink"]

#: Encoded packets gathered before one write to the output (a few MB).
WRITE_PACKETS = 50_000


class Sink:
    """Gathers encoded packets (``add`` is the list's own append, for speed) and writes
    them in large chunks when the exporter calls ``flush``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.parts: list[bytes] = []
        self.add = self.parts.append
        self.packets = 0

    def flush(self, *, force: bool = True) -> None:
        if force or len(self.parts) > WRITE_PACKETS:
            self.packets += len(self.parts)
            self.out.write(b"".join(self.parts))
            self.parts.clear()


class Nest:
    """One track's slices and instants, released in nesting order as time allows.

    Items sort by (start, instant-before-slice, -end for slices, creation order): at one
    start the outer slice opens first. Before an item at ``ts``, every open slice that ends
    before ``ts`` closes (innermost first); slices ending exactly at ``ts`` close after the
    instants at ``ts`` (an acknowledgement at a chain's end stays inside the chain) and
    before the next slice opens (zero-length slices close at once). An item is released
    only once nothing that could sort before it can still arrive (``release(low)``).
    """

    __slots__ = ("buf", "enc", "sink", "stack", "track")

    def __init__(self, track: int, enc: PacketEncoder, sink: Sink) -> None:
        self.track = track
        self.enc = enc
        self.sink = sink
        self.buf: list[tuple[Any, ...]] = []
        self.stack: list[int] = []  # ends of the open slices

    def slice(self, order: int, start: int, end: int, name: str, args: Any, flows: Any,
              intern: bool) -> None:  # fmt: skip
        end = max(end, start)
        self.buf.append((start, 1, -end, order, end, name, args, flows, intern))

    def instant(self, order: int, ts: int, name: str, args: Any, terminating: Any) -> None:
        self.buf.append((ts, 0, order, order, 0, name, args, terminating, True))

    def release(self, low: int) -> None:
        # One loop with everything in locals: this runs once per slice and instant.
        buf, stack, track, enc = self.buf, self.stack, self.track, self.enc
        add, frame, end_rest = self.sink.add, enc.frame, enc.end_rest(track)
        if buf:
            buf.sort()  # the first four fields decide: the creation order is unique
            n = 0
            for it in buf:
                ts = it[0]
                if ts >= low:
                    break
                n += 1
                if it[1]:
                    # Slices ending at ``ts`` close before a slice opens there.
                    while stack and stack[-1] <= ts:
                        add(frame(stack.pop(), end_rest))
                    end = it[4]
                    # A child may not outlive its parent in the UI: clamp to the parent's end.
                    if stack and end > stack[-1]:
                        end = stack[-1]
                    add(enc.begin(ts, track, it[5], it[6], it[7], it[8]))
                    stack.append(end)
                else:
                    # ... but after the instants there.
                    while stack and stack[-1] < ts:
                        add(frame(stack.pop(), end_rest))
                    add(enc.event(ts, TYPE_INSTANT, track, it[5], it[6], terminating=it[7]))
            del buf[:n]
        # Nothing at or after ``low`` can close a slice that ends before it any later.
        while stack and stack[-1] < low:
            add(frame(stack.pop(), end_rest))

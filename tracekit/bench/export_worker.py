"""Child process of ``tracekit bench``: export N synthetic events, report timings as JSON.

Run in its own process so that its peak RSS (``ru_maxrss`` from ``wait4``) is the
exporter's alone.

What is measured:

* ``export_s``: the whole path from raw events to the file: the synthetic events are
  produced as a stream (a generator, never a list), fed through chain reconstruction and
  the exporter, and written. The time to *generate* the events is included (it cannot be
  separated from a stream without holding it); the generator fills precomputed cycle
  templates (``bench/synthetic.py``), ~0.7 µs per event, under 10% of the total.
* ``serialize_s``, the baseline: writing the very same packets with protobuf and nothing
  else. The written file is read back packet by packet with a small varint reader, in
  batches of ``BATCH`` packets parsed into ``perfetto_trace_pb2.TracePacket`` objects
  (untimed), and only their serialization into ``Trace`` messages and the write are
  timed. Batches keep the baseline's own memory small, so the child's peak RSS stays the
  exporter's.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.bench.synthetic import synthetic_events
from tracekit.export.perfetto import export_events
from tracekit.probes.spec import load_probe_set

BATCH = 10_000


def _framed_packets(fh: IO[bytes]) -> Iterator[bytes]:
    """The payloads of a ``Trace`` file's ``packet`` fields (tag 0x0a), one at a time."""
    buf = b""
    pos = 0
    while True:
        if len(buf) - pos < 16:
            more = fh.read(1 << 20)
            buf = buf[pos:] + more
            pos = 0
            if not buf:
                return
        if buf[pos] != 0x0A:
            raise ValueError(f"unexpected field tag {buf[pos]:#x}")
        pos += 1
        size = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        while len(buf) - pos < size:
            more = fh.read(max(1 << 20, size))
            if not more:
                raise ValueError("truncated packet")
            buf += more
        yield buf[pos : pos + size]
        pos += size


def baseline(path: Path, out: Path) -> tuple[float, int]:
    """Seconds to serialize every packet of ``path`` with protobuf; packet count."""
    total = 0.0
    count = 0
    with path.open("rb") as src, out.open("wb") as fh:
        packets = _framed_packets(src)
        while True:
            batch = [pb.TracePacket.FromString(p) for p in itertools.islice(packets, BATCH)]
            if not batch:
                break
            count += len(batch)
            start = time.perf_counter()
            for p in batch:
                one = pb.Trace()
                one.packet.append(p)
                fh.write(one.SerializeToString())
            total += time.perf_counter() - start
    return total, count


def main(n: int, out: Path) -> dict[str, float]:
    decoder = load_probe_set().decoder
    meta = {"scenario": "synthetic", "kvm_mode": "vhe", "ground_truth": None}
    events = synthetic_events(n)
    start = time.perf_counter()
    with out.open("wb") as fh:
        counts = export_events(fh, events, decoder, meta, "vhe")
    export_s = time.perf_counter() - start
    serialize_s, packets = baseline(out, out.with_suffix(".baseline"))
    assert packets == counts["events"] + counts["tracks"]
    return {
        "events": counts["raw_events"],
        "packets": packets,
        "chains": counts["chains"],
        "export_s": export_s,
        "serialize_s": serialize_s,
        "bytes": out.stat().st_size,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), Path(sys.argv[2]))))

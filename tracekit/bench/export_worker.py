"""Child process of ``tracekit bench``: export N synthetic events, report timings as JSON.

Run in its own process so that its peak RSS (``ru_maxrss`` from ``wait4``) is the
exporter's alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.bench.synthetic import synthetic_events
from tracekit.export.perfetto import export_trace
from tracekit.model.chains import reconstruct
from tracekit.probes.spec import load_probe_set


def main(n: int, out: Path) -> dict[str, float]:
    decoder = load_probe_set().decoder
    events = list(synthetic_events(n))
    meta = {"scenario": "synthetic", "kvm_mode": "vhe", "ground_truth": None}
    start = time.perf_counter()
    recon = reconstruct(events, decoder, "vhe")
    with out.open("wb") as fh:
        counts = export_trace(fh, recon, events, decoder, meta)
    export_s = time.perf_counter() - start
    # Baseline: serializing the very same packets with protobuf, nothing else.
    trace = pb.Trace()
    trace.ParseFromString(out.read_bytes())
    packets = list(trace.packet)
    start = time.perf_counter()
    with out.with_suffix(".baseline").open("wb") as fh:
        for p in packets:
            one = pb.Trace()
            one.packet.append(p)
            fh.write(one.SerializeToString())
    serialize_s = time.perf_counter() - start
    return {
        "events": len(events),
        "packets": counts["events"] + counts["tracks"],
        "chains": len(recon.chains),
        "export_s": export_s,
        "serialize_s": serialize_s,
        "bytes": out.stat().st_size,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), Path(sys.argv[2]))))

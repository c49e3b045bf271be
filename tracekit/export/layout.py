"""The exported trace's track layout: its synthetic processes and tracks, their uuids and
their order in the UI (the layout itself is described in :mod:`tracekit.export.perfetto`).

Track uuids come from a counter in order of first use, and a track's descriptor is written
the first time something needs the track, so the layout is deterministic for one input.
"""

from __future__ import annotations

from typing import IO

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.export.nest import Nest, Sink
from tracekit.export.wire import PacketEncoder, framed
from tracekit.model.chains import SOURCE_LABELS
from tracekit.model.vocabulary import CLASSES

__all__ = ["CLASS_TITLES", "SEQ", "TrackLayout"]

SEQ = 0x7C0DE
CLASS_TITLES = {
    "hardware": "Interrupts: hardware (device/timer)",
    "virtual": "Interrupts: virtual (from userspace)",
    "ipi": "Interrupts: IPI (SGI between vCPUs)",
}


class TrackLayout:
    """The processes and tracks of one trace, created on first use."""

    def __init__(self, out: IO[bytes]) -> None:
        self.sink = Sink(out)
        self.enc = PacketEncoder(SEQ)
        self._uuid = 0
        self.tracks = 0
        self.nests: list[Nest] = []
        self.meta_proc = self._process(1, "tracekit")
        self.meta_track = self._track(self.meta_proc, "recording")
        self.host_proc = self._process(2, "L1 host CPUs (KVM)")
        self.guest_proc = self._process(3, "L2 guest vCPUs")
        self.gic_proc = self._process(4, "QEMU GICv3 (hardware view)")
        self.rate_proc = self._process(5, "Exit rate (exits/s by reason)")
        self.class_proc: dict[str, int] = {}
        self.cpu: dict[int, tuple[Nest, int, int, int]] = {}  # slices, probes, LRs, GIC
        self.vcpu: dict[int, Nest] = {}
        self.delivery: dict[tuple[str, int, int, str], tuple[Nest, Nest]] = {}

    def _descriptor(self, td: pb.TrackDescriptor) -> int:
        self._uuid += 1
        td.uuid = self._uuid
        pkt = pb.TracePacket()
        pkt.track_descriptor.CopyFrom(td)
        self.sink.add(framed(pkt.SerializeToString()))
        self.tracks += 1
        return self._uuid

    def _process(self, pid: int, name: str) -> int:
        td = pb.TrackDescriptor()
        td.process.pid = pid
        td.process.process_name = name
        return self._descriptor(td)

    def _track(self, parent: int, name: str, *, counter: bool = False, rank: int = 0) -> int:
        td = pb.TrackDescriptor()
        td.parent_uuid = parent
        td.name = name
        td.sibling_order_rank = rank
        if counter:
            td.counter.unit = pb.CounterDescriptor.UNIT_COUNT
        return self._descriptor(td)

    def _nest(self, parent: int, name: str, rank: int) -> Nest:
        nest = Nest(self._track(parent, name, rank=rank), self.enc, self.sink)
        self.nests.append(nest)
        return nest

    def _cpu(self, c: int) -> tuple[Nest, int, int, int]:
        tr = self.cpu.get(c)
        if tr is None:
            tr = self.cpu[c] = (
                self._nest(self.host_proc, f"L1 CPU{c}", 3 * c),
                self._track(self.host_proc, f"L1 CPU{c}: probe hits", rank=3 * c + 1),
                self._track(
                    self.host_proc,
                    f"L1 CPU{c}: list registers in use",
                    counter=True,
                    rank=3 * c + 2,
                ),
                self._track(self.gic_proc, f"GIC CPU i/f {c}", rank=c),
            )
        return tr

    def _vcpu(self, v: int) -> Nest:
        nest = self.vcpu.get(v)
        if nest is None:
            nest = self.vcpu[v] = self._nest(self.guest_proc, f"L2 vCPU{v}", v)
        return nest

    def _chain_tracks(self, key: tuple[str, int, int, str]) -> tuple[Nest, Nest]:
        tracks = self.delivery.get(key)
        if tracks is None:
            cls, intid, vcpu, source = key
            proc = self.class_proc.get(cls)
            if proc is None:
                pid = 10 + (CLASSES.index(cls) if cls in CLASSES else 3 + len(self.class_proc))
                proc = self.class_proc[cls] = self._process(pid, CLASS_TITLES.get(cls, cls))
            # Rank from the key itself (INTID, vCPU, source), as the set of keys is not
            # known up front: the UI still lists sources by INTID.
            labels = list(SOURCE_LABELS.values())
            src = labels.index(source) if source in labels else len(labels)
            rank = 2 * ((intid * 1024 + vcpu + 1) * 8 + src)
            label = f"INTID {intid} -> vCPU{vcpu} ({source})"
            tracks = self.delivery[key] = (
                self._nest(proc, label, rank),
                self._nest(proc, f"{label}: source (A)", rank + 1),
            )
        return tracks

"""Perfetto exporter: raw events -> exits, entries, A–F chains and GIC events -> a
``.pftrace``, streamed (pure; writes through an injected ``IO[bytes]``).

Events go through :class:`~tracekit.model.incremental.ChainBuilder` one at a time; every
packet is written as soon as it is final, so memory holds only open state, never the
trace. Output is deterministic for the same input: track uuids come from a counter in
order of first use, and each track's events come out in the same nesting order a full sort
would give (:class:`~tracekit.export.nest.Nest`). Across tracks the file is only roughly
time-ordered; trace processors sort by timestamp (and keep the file order of equal
timestamps, which on one track is the nesting order).

Layout (each group is a synthetic "process" so the UI groups it):

* ``Interrupts: hardware|virtual|ipi``: per source (INTID -> vCPU) a *delivery* track whose
  chain slices contain the B..F phase slices, and a *source* track with the A slices;
  flow arrows link A -> B -> C -> D -> E -> F -> the guest's acknowledgement.
* ``L1 host CPUs``: per CPU the exits (B, C, D) and entries (E, F) of every vCPU, the
  probe hits as instants, and a counter of list registers in use.
* ``L2 guest vCPUs``: per vCPU, "in guest" slices and the acknowledge/EOI instants, and
  the D of an exit whose handling did not stay on one L1 CPU (a WFI halt, a migration).
* ``QEMU GICv3``: list-register writes and SGI generation per CPU (hardware view).
* ``Exit rate``: exits per second by reason.

The exporter, by concept: :mod:`.nest` (per-track nesting order and buffered release),
:mod:`.layout` (the processes and tracks), :mod:`.content` (the packets on them) and this
module, the loop that drives them over the events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

from tracekit.export.content import END_MARKER, PHASE_TITLES, Exporter
from tracekit.model.chains import Reconstruction
from tracekit.model.events import RawEvent
from tracekit.model.incremental import ChainBuilder
from tracekit.model.meta import RecordingMeta
from tracekit.model.vocabulary import Role
from tracekit.probes.spec import ExitDecoder

__all__ = ["END_MARKER", "PHASE_TITLES", "export_events", "export_trace"]

#: Input events between two releases of buffered slices (amortizes the low-water scan).
RELEASE_EVERY = 2048


def export_events(
    out: IO[bytes],
    events: Iterable[RawEvent],
    decoder: ExitDecoder,
    meta: RecordingMeta | Mapping[str, Any],
    kvm_mode: str = "vhe",
) -> dict[str, int]:
    """Reconstruct and write the trace in one pass over time-sorted ``events``.

    ``meta`` may also be a plain ``meta.json`` object (the benchmark's synthetic export
    passes one). Returns packet counts (``tracks``: descriptors, ``events``: track
    events), the number of raw events read and chain counts for the caller's report.
    """
    if not isinstance(meta, RecordingMeta):
        meta = RecordingMeta.from_json(dict(meta), "recording metadata")
    ex = Exporter(out, decoder, meta, kvm_mode)
    builder = ChainBuilder(decoder, kvm_mode)
    closed_exits, closed_entries, chains, unacked = (
        builder.closed_exits,
        builder.closed_entries,
        builder.chains,
        builder.unacked,
    )
    feed, raw, running = builder.feed, ex.raw, builder.running
    add, frame, instant_rests = ex.sink.add, ex.enc.frame, ex.instant_rests
    handle_exit = Role.HANDLE_EXIT.value  # a plain str: compared per event
    n = 0
    for ev in events:
        if not n:
            ex.meta_instant(ev.t)
        n += 1
        feed(ev)
        if ev.source == "probe" and ev.role != handle_exit:
            # ``Exporter.raw``'s probe-hit path for an instant encoded before, inline:
            # this runs for most events.
            values = ev.values
            key = (ev.cpu, ev.name, ev.phase, *values.items()) if values else (
                ev.cpu, ev.name, ev.phase)  # fmt: skip
            rest = instant_rests.get(key)
            if rest is not None:
                add(frame(ev.t, rest))
            else:
                raw(ev, running)
        else:
            raw(ev, running)
        if closed_exits:
            for x in closed_exits:
                ex.exit(x)
            closed_exits.clear()
        if closed_entries:
            for e in closed_entries:
                ex.entry(e)
            closed_entries.clear()
        if chains:
            for c in chains:
                ex.chain(c)
            chains.clear()
        if unacked:
            for u in unacked:
                ex.unacked(u)
            unacked.clear()
        if n % RELEASE_EVERY == 0:
            ex.resolve_in_guest(builder.exits_low_water())
            low = builder.low_water()
            guest_low = ex.in_guest_low()
            ex.release(low if guest_low is None else min(low, guest_low))
    if not n:
        ex.meta_instant(0)
    builder.finish()
    for x in closed_exits:
        ex.exit(x)
    for e in closed_entries:
        ex.entry(e)
    for c in chains:
        ex.chain(c)
    for u in unacked:
        ex.unacked(u)
    counts = ex.finish(builder.now, builder.chain_count, builder.unknown_sources)
    counts["raw_events"] = n
    counts["chains"] = builder.chain_count
    counts["unmatched_acks"] = builder.unmatched_acks
    counts["unacknowledged"] = builder.unacked_count
    return counts


def export_trace(
    out: IO[bytes],
    recon: Reconstruction,
    events: Iterable[RawEvent],
    decoder: ExitDecoder,
    meta: RecordingMeta,
) -> dict[str, int]:
    """Write the trace of a recording already reconstructed as ``recon``.

    The exporter streams its own reconstruction (identical to ``recon``: same builder,
    same mode), so that one code path writes every trace.
    """
    return export_events(out, sorted(events, key=lambda e: e.t), decoder, meta, recon.kvm_mode)

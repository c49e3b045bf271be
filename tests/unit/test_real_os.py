"""What a real Linux L2 adds (docs/phases.md, "What a real OS adds"): MSIs through the
virtual ITS (LPIs, class ``msi``), interrupts re-queued before their acknowledgement
(merged chains) and queues never acknowledged (unacknowledged rows).

Hand-made event streams, built like test_sources.py's.
"""

from __future__ import annotations

import io

import pytest

from tests.unit.test_sources import FRAME_A, FRAME_B, delivery, ev, one_chain, queue
from tracekit.export.perfetto import export_events
from tracekit.export.reader import parse_trace
from tracekit.model.chains import classify
from tracekit.model.events import RawEvent
from tracekit.model.incremental import ChainBuilder, reconstruct
from tracekit.model.meta import RecordingMeta
from tracekit.model.summary import class_counts, matches, summarize_table
from tracekit.model.table import (
    SCHEMA_VERSION,
    ChainRow,
    ChainTable,
    UnackedRow,
    read_table,
    table_of,
)
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

LPI = 8192 + 5


def _recon(events: list[RawEvent], **kw: int) -> ChainBuilder:
    builder = ChainBuilder(load_probe_set().decoder, "vhe", keep_all=True, **kw)
    for e in sorted(events, key=lambda e: e.t):
        builder.feed(e)
    builder.finish()
    return builder


# -- the msi class ------------------------------------------------------------------------


def test_an_lpi_from_the_fast_path_is_an_msi_chain() -> None:
    """irqfd_wakeup -> kvm_arch_set_irq_inatomic -> vgic_its_inject_cached_translation:
    the innermost source is the ITS's, and A starts there (another kind outside)."""
    events = [
        ev(1000, 1, "irqfd_wakeup", "source_irqfd", frame=FRAME_B),
        ev(1100, 1, "vgic_its_inject_cached_translation", "source_msi", frame=FRAME_A),
        queue(1300, 1, LPI, 0, {
            "vgic_its_inject_cached_translation": (1, FRAME_A),
            "irqfd_wakeup": (3, FRAME_B),
        }),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *delivery(LPI, 0, 0, 2000),
    ]  # fmt: skip
    c = one_chain(events)
    assert (c.cls, c.source_kind, c.source_function, c.source) == (
        "msi",
        "msi",
        "vgic_its_inject_cached_translation",
        "MSI via the ITS",
    )
    assert c.phases["A"].start == 1100 and c.complete and c.merged_queues == 0


def test_the_slow_path_names_vgic_its_inject_msi() -> None:
    """vgic_its_inject_msi tries the cache first: both frames are the ITS's, A starts at
    the outer one, and the chain's source_function tells the slow path."""
    events = [
        ev(1000, 1, "irqfd_inject", "source_irqfd", frame=FRAME_B),
        ev(1050, 1, "vgic_its_inject_msi", "source_msi", frame=FRAME_A),
        ev(1100, 1, "vgic_its_inject_cached_translation", "source_msi", frame=FRAME_A - 0x40),
        queue(1300, 1, LPI, 0, {
            "vgic_its_inject_cached_translation": (1, FRAME_A - 0x40),
            "vgic_its_inject_msi": (2, FRAME_A),
            "irqfd_inject": (5, FRAME_B),
        }),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *delivery(LPI, 0, 0, 2000),
    ]  # fmt: skip
    c = one_chain(events)
    assert (c.cls, c.source_function, c.phases["A"].start) == ("msi", "vgic_its_inject_msi", 1050)


def test_an_lpi_without_a_known_source_is_msi_by_its_range() -> None:
    events = [
        queue(1300, 1, LPI, 0, {}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *delivery(LPI, 0, 0, 2000),
    ]
    c = one_chain(events)
    assert (c.cls, c.source_kind) == ("msi", "")
    assert [classify(i, "") for i in (3, 27, 1019, 8191, 8192)] == [
        "ipi",
        "unknown",
        "unknown",
        "unknown",
        "msi",
    ]


@pytest.mark.parametrize(("intid", "kept"), [(1019, True), (1020, False), (1023, False),
                                             (8191, False), (8192, True)])  # fmt: skip
def test_acknowledgements_of_lpis_count_special_and_reserved_do_not(intid: int, kept: bool) -> None:
    ack = RawEvent(200, 0, "gic", "gicv3_icv_iar_read", "ack", "", {"intid": intid})
    b = _recon([ev(100, 0, "guest_eret", "eret"), ack])
    assert len(b.all_acks) == int(kept)


# -- merged chains ------------------------------------------------------------------------


def test_a_queue_before_the_ack_merges_into_the_pending_one() -> None:
    """Two pending queues of (INTID, vCPU), one acknowledgement: one chain, merged; a queue
    after the acknowledgement is a new instance (here never acknowledged)."""
    events = [
        queue(1300, 1, 40, 0, {}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        queue(1500, 1, 40, 0, {}),  # re-queued (or a level re-asserted) before the ack
        queue(1600, 1, 40, 0, {}),
        *delivery(40, 0, 0, 2000),  # ack at 3200
        queue(3300, 1, 40, 0, {}),
    ]
    b = _recon(events)
    (c,) = b.chains
    assert c.merged_queues == 2 and c.phases["A"].start == 1300
    (u,) = b.all_unacked
    assert (u.t, u.intid, u.vcpu, u.merged_queues) == (3300, 40, 0, 0)


def test_a_queue_that_is_not_pending_does_not_merge() -> None:
    """A level drop also calls vgic_queue_irq_unlock: not pending, not a queue."""
    events = [
        queue(1300, 1, 40, 0, {}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        ev(1500, 1, "vgic_queue_irq_unlock", "queue", intid=40, target_vcpu=0,
           pending_latch=0, line_level=0, config=1, hw=0),
        *delivery(40, 0, 0, 2000),
    ]  # fmt: skip
    assert one_chain(events).merged_queues == 0


# -- unacknowledged queues ----------------------------------------------------------------


def test_a_queue_never_acknowledged_is_unacked_at_the_end() -> None:
    events = [
        ev(1000, 1, "vgic_its_inject_cached_translation", "source_msi", frame=FRAME_A),
        queue(1300, 1, LPI, 0, {"vgic_its_inject_cached_translation": (1, FRAME_A)}),
        queue(1350, 1, LPI, 0, {}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
    ]
    recon = reconstruct(events, load_probe_set().decoder, "vhe")
    assert recon.chains == [] and recon.dropped_pending == 0
    (u,) = recon.unacknowledged
    assert (u.t, u.cpu, u.intid, u.vcpu, u.cls, u.source_kind, u.merged_queues) == (
        1300, 1, LPI, 0, "msi", "msi", 1,
    )  # fmt: skip
    assert u.source_function == "vgic_its_inject_cached_translation"


def test_a_queue_dropped_after_max_pending_is_unacked_too() -> None:
    events = [
        queue(1000, 1, 41, 0, {}),
        ev(1100, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        queue(5000, 1, 41, 0, {}),  # long after: the first one is dropped, this one kept
        *delivery(41, 0, 0, 6000),
    ]
    b = _recon(events, max_pending_ns=1000)
    assert b.dropped_pending == 1
    (u,) = b.all_unacked
    assert (u.t, u.intid, u.cls, u.merged_queues) == (1000, 41, "unknown", 0)
    (c,) = b.chains
    assert c.phases["A"].start == 5000 and c.merged_queues == 0


# -- the summary and the table --------------------------------------------------------------


def _row(i: int, cls: str, merged: int = 0, *, complete: bool = True) -> ChainRow:
    phases = {p: 10 for p in "ABCDEF" if complete or p != "B"}
    return ChainRow(i, cls, 40, 0, "s", phase_ns=phases, merged_queues=merged)


def test_class_counts() -> None:
    chains = [
        _row(0, "msi"),
        _row(1, "msi", 1),
        _row(2, "msi", 2, complete=False),
        _row(3, "virtual", complete=False),
        _row(4, "unknown"),
    ]
    unacked = [UnackedRow(5, LPI, 0, "msi"), UnackedRow(6, 40, 1, "virtual")]
    counts = class_counts(chains, unacked, {"msi": 2, "virtual": 1})
    assert counts["msi"] == {
        "ground_truth": 2,
        "complete_chains": 1,
        "merged_chains": 1,
        "partial_chains": 1,
        "unacknowledged": 1,
    }
    assert counts["virtual"]["partial_chains"] == 1 and counts["virtual"]["unacknowledged"] == 1
    assert counts["hardware"] == dict.fromkeys(counts["hardware"], 0)
    assert counts["unknown"]["complete_chains"] == 1
    assert list(counts)[:4] == ["hardware", "virtual", "ipi", "msi"]
    # Complete + merged account for the ground truth; any partial chain does not match.
    assert not matches(counts["msi"])
    assert matches({**counts["msi"], "partial_chains": 0})
    # A window: only the rows inside it.
    inside = class_counts(chains[:2], unacked[:1], {"msi": 2})
    assert matches(inside["msi"]) and inside["msi"]["unacknowledged"] == 1


def test_summary_reports_merged_and_unacknowledged() -> None:
    table = ChainTable(
        RecordingMeta(),
        SCHEMA_VERSION,
        (_row(0, "msi"), _row(1, "msi", 3)),
        (),
        (UnackedRow(5, LPI, 0, "msi"),),
    )
    msi = summarize_table(table)["classes"]["msi"]
    assert (msi["complete_chains"], msi["merged_chains"], msi["unacknowledged"]) == (1, 1, 1)


def test_merged_queues_and_unacknowledged_rows_round_trip_through_a_trace() -> None:
    events = [
        ev(1000, 1, "vgic_its_inject_cached_translation", "source_msi", frame=FRAME_A),
        queue(1300, 1, LPI, 0, {"vgic_its_inject_cached_translation": (1, FRAME_A)}),
        ev(1400, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        queue(1500, 1, LPI, 0, {}),
        *delivery(LPI, 0, 0, 2000),
        queue(3300, 1, LPI, 0, {}),
        queue(3400, 1, 41, 1, {}),
    ]
    decoder = load_probe_set().decoder
    out = io.BytesIO()
    counts = export_events(out, events, decoder, RecordingMeta(scenario="s"))
    assert counts["unacknowledged"] == 2
    trace = parse_trace(out.getvalue())
    assert not trace.problems
    recon = reconstruct(events, decoder, "vhe")
    expected = table_of(recon, decoder.describe, RecordingMeta(scenario="s"))
    assert trace.table.chains == expected.chains
    assert trace.table.unacknowledged == expected.unacknowledged
    (chain,) = trace.table.chains
    assert (chain.cls, chain.merged_queues) == ("msi", 1)
    assert [(u.t, u.intid, u.vcpu, u.cls, u.source) for u in trace.table.unacknowledged] == [
        (3300, LPI, 0, "msi", "source unknown"),
        (3400, 41, 1, "unknown", "source unknown"),
    ]
    titles = {i.name for i in trace.instants}
    assert f"unacknowledged INTID {LPI} (source unknown)" in titles


def test_a_row_without_merged_queues_reads_as_zero() -> None:
    args = _row(7, "virtual").to_args()
    assert args["merged_queues"] is None  # 0 is not written (the exporter drops None)
    del args["merged_queues"]  # a row of a trace written before the field
    assert ChainRow.from_args(args).merged_queues == 0
    merged = _row(7, "virtual", 2).to_args()
    assert merged["merged_queues"] == 2 and ChainRow.from_args(merged).merged_queues == 2
    with pytest.raises(ValueError):
        ChainRow.from_args({**merged, "merged_queues": True})


def test_read_table_finds_unacknowledged_rows_on_instants() -> None:
    meta = {"tracekit.meta": "{}", "tracekit.table": SCHEMA_VERSION}
    row = UnackedRow(9, LPI, 2, "msi", "MSI via the ITS", "msi", "vgic_its_inject_msi", 1, 1)
    table, problems = read_table([meta, row.to_args(), {"tracekit.row": "bogus"}], [])
    assert table.unacknowledged == (row,)
    assert problems == ["unknown table row kind 'bogus' on an instant"]

"""A Linux L2's counts as ground truth, its window marks and the per-INTID check
(model/l2truth.py), on the report of a real linux-pci run and on hand-made events."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import GroundTruthError
from tracekit.model.events import RawEvent
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.l2report import parse_report
from tracekit.model.l2truth import (
    MARK_IPA,
    Window,
    check_window,
    ground_truth_of,
    msi_routes,
    resolve_msis,
    window_of,
)

pytestmark = pytest.mark.unit

REPORT = Path(__file__).parents[1] / "data" / "linux-l2" / "l2-report-pci.txt"


def mark(t: int, offset: int, cpu: int = 0) -> RawEvent:
    return RawEvent(t, cpu, "plugin", "io_mem_abort", "path", "D", {"fault_ipa": MARK_IPA + offset})


def test_ground_truth_of_the_pci_report_keeps_only_what_the_guest_counted() -> None:
    gt = ground_truth_of(parse_report(REPORT.read_text()), "linux-pci")
    assert gt.vcpus == 2 and gt.ok and not gt.disagreements()
    classes = {i.cls for i in gt.interrupts}
    assert classes <= {"hardware", "ipi", "msi", "virtual"} and "msi" in classes
    assert all(i.acked > 0 for i in gt.interrupts)
    msis = [i for i in gt.interrupts if i.cls == "msi"]
    assert msis and all(i.intid == -1 and i.msi is not None for i in msis)
    timer = [i for i in gt.interrupts if i.intid == 27]
    assert timer and all(i.cls == "hardware" and i.source == "arch_timer" for i in timer)
    # Round trip through meta.json's form, MSI identities included.
    assert GroundTruth.from_json(gt.to_json()) == gt


def test_window_from_marks_in_order() -> None:
    events = [mark(10, 0), mark(20, 8, cpu=1), mark(500, 16), mark(510, 24)]
    assert window_of(events) == Window(10, 20, 500, 510)
    assert window_of([]) is None
    with pytest.raises(GroundTruthError, match="not"):
        window_of(events[:3])
    with pytest.raises(GroundTruthError, match="repeated"):
        window_of([*events, mark(600, 24)])
    with pytest.raises(GroundTruthError, match="out of order"):
        window_of([mark(10, 0), mark(20, 16), mark(30, 8), mark(40, 24)])
    # Another MMIO exit is not a mark.
    other = RawEvent(5, 0, "plugin", "io_mem_abort", "path", "D", {"fault_ipa": 0x0A000000})
    assert window_of([other, *events]) == Window(10, 20, 500, 510)


def test_msi_routes_join_the_translation_to_the_lpi_queued_next_on_its_cpu() -> None:
    def ev(t: int, cpu: int, role: str, **values: int) -> RawEvent:
        return RawEvent(t, cpu, "plugin", role, role, "A", values)

    events = [
        ev(1, 0, "source_msi", devid=8, eventid=1),
        ev(2, 1, "queue", intid=27),  # another CPU's timer: not this MSI's
        ev(3, 0, "queue", intid=8193),
        ev(4, 1, "source_msi", devid=16, eventid=2),
        ev(5, 1, "queue", intid=8195),
    ]
    assert msi_routes(events) == {(8, 1): 8193, (16, 2): 8195}
    clash = [*events, ev(6, 0, "source_msi", devid=8, eventid=1), ev(7, 0, "queue", intid=8200)]
    with pytest.raises(GroundTruthError, match="LPI 8193 and as LPI 8200"):
        msi_routes(clash)


def test_check_window_inner_brackets_and_outside() -> None:
    gt = ground_truth_of(parse_report(REPORT.read_text()), "linux-pci")
    gt = resolve_msis(gt, {})
    window = Window(100, 110, 1000, 1010)
    timer0 = next(i for i in gt.interrupts if i.intid == 27 and i.vcpu == 0)
    n = timer0.acked
    acks = [(200 + k, 27, 0) for k in range(n - 1)]
    acks += [(105, 27, 0)]  # in the begin bracket: may be counted
    acks += [(50, 27, 0), (2000, 27, 0)]  # outside: never counted
    checks = {(c.intid, c.vcpu): c for c in check_window(gt, window, acks)}
    c = checks[(27, 0)]
    assert (c.guest, c.inner, c.bracketed, c.ok, c.exact) == (n, n - 1, 1, True, False)
    # An MSI the recording never saw translated cannot be checked: named, not ok.
    msi = next(c for c in checks.values() if c.cls == "msi")
    assert not msi.ok and "never translated" in msi.describe()
    # Acknowledged in the window but not counted by the guest.
    extra = check_window(gt, window, [(500, 40, 1)])
    assert any(c.intid == 40 and not c.ok for c in extra)


def test_summary_of_a_linux_recording_counts_its_window() -> None:
    """summarize_table with an L2 window: classes over the window only (chains by their
    acknowledgement, unacknowledged queues by their time), brackets counted apart, the
    per-(INTID, vCPU) table, L2's names on the busiest INTIDs."""
    from tracekit.model.ground_truth import InterruptCount
    from tracekit.model.meta import RecordingMeta
    from tracekit.model.summary import summarize_table, window_matches
    from tracekit.model.table import ChainRow, ChainTable, UnackedRow

    phases = dict.fromkeys("ABCDEF", 10)
    gt = GroundTruth(
        "linux-pci", 2, 1, True, (),
        (
            InterruptCount("hardware", 27, 0, "arch_timer", 3, 3),
            InterruptCount("msi", 8194, 1, "virtio0-req.1", 2, 2, msi=(8, 1)),
        ),
        (), 0, 0, {},
    )  # fmt: skip
    window = Window(100, 110, 1000, 1010)

    def row(i: int, intid: int, vcpu: int, cls: str, ack: int, merged: int = 0) -> ChainRow:
        return ChainRow(i, cls, intid, vcpu, "s", phase_ns=phases, merged_queues=merged, ack_ns=ack)

    chains = (
        row(1, 27, 0, "hardware", 50),  # before the window: not counted
        row(2, 27, 0, "hardware", 200),
        row(3, 27, 0, "hardware", 300, merged=1),
        row(4, 27, 0, "hardware", 1005),  # in the end bracket: may be in the guest's 3
        row(5, 8194, 1, "msi", 400),
        row(6, 8194, 1, "msi", 500),
        row(7, 8194, 1, "msi", 2000),  # after
    )
    unacked = (UnackedRow(600, 27, 1, "hardware"), UnackedRow(5000, 27, 0, "hardware"))
    meta = RecordingMeta(scenario="linux-pci", ground_truth=gt, l2_window=window)
    s = summarize_table(ChainTable(meta, 1, chains, (), unacked))
    hw, msi = s["classes"]["hardware"], s["classes"]["msi"]
    assert (hw["ground_truth"], hw["complete_chains"], hw["merged_chains"]) == (3, 1, 1)
    assert (hw["bracketed"], hw["unacknowledged"]) == (1, 1)
    assert (msi["ground_truth"], msi["complete_chains"], msi["bracketed"]) == (2, 2, 0)
    assert window_matches(hw) and window_matches(msi)
    l2 = s["l2_window"]
    assert l2["ok"] and l2["exact"] == 1  # the timer is within its bracket, the MSI exact
    by = {(r["intid"], r["vcpu"]): r for r in l2["intids"]}
    assert (by[(27, 0)]["recorded"], by[(27, 0)]["bracketed"]) == (2, 1)
    names = {b["intid"]: b.get("name") for b in s["busiest_intids"]}
    assert names == {27: "arch_timer", 8194: "virtio0-req.1"}

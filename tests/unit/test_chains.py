"""Phase reconstruction on a real recorded event stream (mixed, count 5)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tracekit.model.events import RawEvent, read_events
from tracekit.model.incremental import reconstruct
from tracekit.model.vocabulary import PHASES
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

RAW = Path(__file__).parents[1] / "data" / "raw" / "mixed5"


def load() -> tuple[list[RawEvent], dict[str, object]]:
    with (RAW / "events.jsonl").open() as fh:
        events = list(read_events(fh))
    return events, json.loads((RAW / "meta.json").read_text())


def test_every_acknowledged_interrupt_is_a_complete_chain() -> None:
    events, meta = load()
    gt = meta["ground_truth"]
    assert isinstance(gt, dict)
    # Classes come from the recording alone; the workload's report only checks them.
    recon = reconstruct(events, load_probe_set().decoder, "vhe")
    per_class = Counter(c.cls for c in recon.chains if c.complete)
    truth = {(i["intid"], i["vcpu"]): i["class"] for i in gt["interrupts"]}
    assert all(c.cls == truth[(c.intid, c.vcpu)] for c in recon.chains)
    assert dict(per_class) == gt["per_class"]
    assert all(c.complete for c in recon.chains)
    assert recon.unmatched_acks == 0
    for c in recon.chains:
        ph = c.phases
        assert set(ph) == set(PHASES)
        assert ph["C"].duration == 0  # VHE: no EL change between hyp and host
        # The delivery side is strictly ordered on the target vCPU.
        assert ph["B"].start <= ph["B"].end <= ph["D"].start <= ph["D"].end
        assert ph["D"].end <= ph["E"].start <= ph["E"].end <= ph["F"].start <= ph["F"].end
        assert ph["F"].end <= c.ack.t
        assert ph["A"].start <= ph["A"].end


def test_sources_and_exit_reasons_by_class() -> None:
    events, _ = load()
    recon = reconstruct(events, load_probe_set().decoder, "vhe")
    sources = {(c.intid, c.cls, c.source, c.source_kind) for c in recon.chains}
    assert sources == {
        (1, "ipi", "SGI (ICC_SGI1R_EL1 trap)", "sgi"),
        (27, "hardware", "arch timer", "timer"),
        (30, "hardware", "arch timer", "timer"),
        (40, "virtual", "irqfd (KVM_IRQFD)", "irqfd"),
        (41, "virtual", "KVM_IRQ_LINE", "irq_line"),
    }
    by_intid = {c.intid: c for c in recon.chains}
    assert by_intid[1].sender_vcpu == 0 and by_intid[1].sgi1r is not None
    assert by_intid[40].source_function == "irqfd_wakeup"
    assert by_intid[41].source_function == "kvm_vm_ioctl_irq_line"
    # A timer interrupt arriving while the guest runs makes an IRQ exit; one that comes
    # while the vCPU is halted is delivered on the WFx exit it wakes from.
    reasons = Counter(c.exit_reason for c in recon.chains if c.intid == 27)
    assert set(reasons) <= {"IRQ", "WFx"} and reasons["IRQ"] > reasons["WFx"]


def test_missing_phase_is_reported_not_hidden() -> None:
    events, _ = load()
    kept = [e for e in events if e.role != "eret"]
    recon = reconstruct(kept, load_probe_set().decoder, "vhe")
    assert recon.chains
    assert all("F" in c.missing for c in recon.chains)
    assert not any(c.complete for c in recon.chains)

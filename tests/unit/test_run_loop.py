"""Exits belong to their vCPU: D ends at that vCPU's own next flush, on whatever L1 CPU
it runs (docs/phases.md, "D across CPUs").

A vCPU that blocks in its exit handler (WFI: ``kvm_handle_wfx`` -> ``kvm_vcpu_block``)
sleeps, and its old CPU runs other vCPUs meanwhile; it may wake on another CPU. The
vCPU thread is also preemptible between its world switch and ``handle_exit``
(arch/arm64/kvm/arm.c). Hand-made streams cover each shape; a recorded stream from CI
(kernel 6.12, QEMU 7.2) where one chain lost its D this way is replayed in full.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from tests.unit.test_sources import FRAME_A, FRAME_B, ev, one_chain, queue
from tracekit.export.perfetto import export_trace
from tracekit.export.reader import parse_trace
from tracekit.model.events import RawEvent, read_events
from tracekit.model.incremental import reconstruct
from tracekit.model.meta import RecordingMeta
from tracekit.model.summary import summarize
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parents[1] / "data" / "raw" / "halt-wake-6.12"
WFI_ESR = 0x04000000  # EC 0x01 (WFx)


def lr_write(t: int, cpu: int, intid: int) -> RawEvent:
    return RawEvent(t, cpu, "gic", "gicv3_ich_lr_write", "lr_write", "",
                    {"lr": 0, "vintid": intid, "state": 1, "hw": 0})  # fmt: skip


def ack(t: int, cpu: int, intid: int) -> RawEvent:
    return RawEvent(t, cpu, "gic", "gicv3_icv_iar_read", "ack", "", {"intid": intid})


def wfi_exit(t: int, cpu: int, vcpu: int) -> list[RawEvent]:
    return [
        ev(t, cpu, "hyp_vector_sync", "vector_sync"),
        ev(t + 16, cpu, "guest_exit", "guest_exit"),
        ev(t + 180, cpu, "host_resume", "host_resume"),
        ev(t + 300, cpu, "handle_exit", "handle_exit", exit_code=2, esr=WFI_ESR, vcpu=vcpu),
        ev(t + 320, cpu, "kvm_handle_wfx", "exit_handler"),
    ]


def entry(t: int, cpu: int, vcpu: int, intid: int | None = None) -> list[RawEvent]:
    out = [ev(t, cpu, "kvm_vgic_flush_hwstate", "flush", vcpu=vcpu)]
    if intid is not None:
        out.append(lr_write(t + 100, cpu, intid))
    return [*out, ev(t + 200, cpu, "enter_guest", "enter"), ev(t + 400, cpu, "guest_eret", "eret")]


def test_a_vcpu_that_halts_and_wakes_on_another_cpu_keeps_its_d() -> None:
    """vCPU0 halts on CPU1; vCPU1 then runs on CPU1; the timer wakes vCPU0 on CPU0. Its D
    ends at its own entry on CPU0, not at vCPU1's flush on CPU1."""
    events = [
        *entry(100, 1, 0),  # vCPU0 in the guest on CPU1
        *wfi_exit(1000, 1, 0),
        *entry(2000, 1, 1),  # vCPU1 runs on CPU1 now
        ev(3000, 0, "kvm_timer_vcpu_load", "source_timer", frame=FRAME_A),  # vCPU0 wakes, CPU0
        queue(3100, 0, 30, 0, {"kvm_timer_vcpu_load": (4, FRAME_A)}),
        ev(3200, 0, "kvm_vcpu_kick", "kick", vcpu=0),
        *entry(3500, 0, 0, intid=30),
        ack(4100, 0, 30),
    ]
    c = one_chain(sorted(events, key=lambda e: e.t))
    assert c.complete, c.missing
    assert (c.phases["D"].start, c.phases["D"].end) == (1300, 3500)
    ex = c.exit
    assert ex is not None and (ex.cpu, ex.vcpu, ex.handle_cpu, ex.d_cpu) == (1, 0, 1, 0)
    assert ex.cpu_taken_t == 2000 and ex.handler_probe == "kvm_handle_wfx"


def test_the_cpu_a_halted_vcpu_left_may_take_another_vcpus_migrated_exit() -> None:
    """vCPU0 halts on CPU0. vCPU1 exits on CPU1, is preempted before handle_exit and
    resumes on CPU0. Both exits keep their own D (the shape the earlier per-CPU "parking"
    got wrong: taking CPU0's slot for vCPU1 closed vCPU0's exit without D)."""
    events = [
        *entry(100, 0, 0),
        *entry(150, 1, 1),
        *wfi_exit(1000, 0, 0),  # vCPU0 sleeps in kvm_vcpu_block, CPU0 idle
        ev(1500, 1, "hyp_vector_irq", "vector_irq"),  # vCPU1's exit forms on CPU1
        ev(1516, 1, "guest_exit", "guest_exit"),
        ev(1680, 1, "host_resume", "host_resume"),
        ev(2000, 0, "handle_exit", "handle_exit", exit_code=0, esr=0, vcpu=1),  # on CPU0
        ev(2600, 1, "irqfd_wakeup", "source_irqfd", frame=FRAME_B),
        queue(2700, 1, 40, 1, {"irqfd_wakeup": (3, FRAME_B)}),
        ev(2800, 1, "kvm_vcpu_kick", "kick", vcpu=1),
        *entry(3000, 0, 1, intid=40),  # vCPU1 re-enters on CPU0
        ack(3500, 0, 40),
        ev(4000, 1, "kvm_timer_vcpu_load", "source_timer", frame=FRAME_A),  # vCPU0 wakes
        queue(4100, 1, 30, 0, {"kvm_timer_vcpu_load": (4, FRAME_A)}),
        ev(4200, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *entry(4500, 1, 0, intid=30),  # ... on CPU1
        ack(5000, 1, 30),
    ]
    recon = reconstruct(sorted(events, key=lambda e: e.t), load_probe_set().decoder, "vhe")
    by_intid = {c.intid: c for c in recon.chains}
    assert all(c.complete for c in recon.chains), [(c.intid, c.missing) for c in recon.chains]
    virt, timer = by_intid[40], by_intid[30]
    assert (virt.phases["B"].start, virt.phases["D"].start, virt.phases["D"].end) == (
        1500,
        2000,
        3000,
    )
    assert (timer.phases["D"].start, timer.phases["D"].end) == (1300, 4500)
    assert timer.exit is not None and timer.exit.cpu_taken_t == 2000


def test_an_exit_to_userspace_is_not_ended_by_another_vcpus_flush() -> None:
    """vCPU0's MMIO exit on CPU0 goes to the VMM; vCPU1 then enters on CPU0. vCPU0's D
    runs on until vCPU0's own next flush."""
    events = [
        *entry(100, 0, 0),
        ev(1000, 0, "hyp_vector_sync", "vector_sync"),
        ev(1016, 0, "guest_exit", "guest_exit"),
        ev(1180, 0, "host_resume", "host_resume"),
        ev(1300, 0, "handle_exit", "handle_exit", exit_code=2, esr=0x92000046, vcpu=0),
        *entry(2000, 0, 1),
        *entry(5000, 1, 0),
    ]
    recon = reconstruct(events, load_probe_set().decoder, "vhe")
    (mmio,) = [x for x in recon.exits if x.vcpu == 0]
    assert (mmio.handle_exit_t, mmio.d_end, mmio.d_cpu, mmio.cpu_taken_t) == (1300, 5000, 1, 2000)


def _recorded() -> tuple[list[RawEvent], RecordingMeta]:
    with gzip.open(RECORDED / "events.jsonl.gz", "rt") as fh:
        events = list(read_events(fh))
    return events, RecordingMeta.from_json(
        json.loads((RECORDED / "meta.json").read_text()), "meta.json"
    )


def test_recorded_halt_and_wake_on_another_cpu_matches_the_ground_truth() -> None:
    """CI, kernel 6.12 on QEMU 7.2: vCPU1 halted in WFI on CPU1 and woke on CPU0 while
    vCPU0's MMIO exit was still with the VMM; that hardware chain had no D."""
    events, meta = _recorded()
    assert meta.probe_set is not None and meta.kvm_mode is not None
    decoder = load_probe_set(meta.probe_set).decoder
    recon = reconstruct(events, decoder, meta.kvm_mode)
    buf = io.BytesIO()
    export_trace(buf, recon, events, decoder, meta)
    content = parse_trace(buf.getvalue())
    assert content.problems == []
    summary = summarize(content)
    for cls, row in summary["classes"].items():
        assert row["partial_chains"] == 0, cls
        assert row["complete_chains"] == row["ground_truth"], cls
    # The D that crossed CPUs is drawn on the vCPU's track, not over CPU1's other work.
    crossing = [s for s in content.slices if s.name.startswith("D handle_exit: WFx")]
    assert len(crossing) == 1 and "CPU1 -> CPU0" in crossing[0].name


def test_an_early_return_belongs_to_the_vcpu_just_flushed_not_the_last_one_in_the_guest() -> None:
    """CPU1 last ran vCPU2 in the guest (its eret), vCPU2 halts; vCPU3 is flushed on CPU1
    but __guest_enter returns early (no eret). That early return is vCPU3's: taken as
    vCPU2's (the last eret), it closed vCPU2's open exit and vCPU2's chain lost D (seen
    with 8 vCPUs on 2 CPUs)."""
    events = [
        *entry(100, 1, 2),
        *wfi_exit(1000, 1, 2),  # vCPU2 sleeps
        ev(2000, 1, "kvm_vgic_flush_hwstate", "flush", vcpu=3),
        ev(2200, 1, "enter_guest", "enter"),
        ev(2300, 1, "host_resume", "host_resume"),  # early return: no eret, no guest exit
        ev(2400, 1, "handle_exit", "handle_exit", exit_code=0, esr=0, vcpu=3),
        *entry(2600, 1, 3),
        ev(3000, 0, "kvm_timer_vcpu_load", "source_timer", frame=FRAME_A),  # vCPU2 wakes
        queue(3100, 0, 30, 2, {"kvm_timer_vcpu_load": (4, FRAME_A)}),
        ev(3200, 0, "kvm_vcpu_kick", "kick", vcpu=2),
        *entry(3500, 0, 2, intid=30),
        ack(4100, 0, 30),
    ]
    c = one_chain(sorted(events, key=lambda e: e.t))
    assert c.complete, c.missing
    assert (c.phases["D"].start, c.phases["D"].end) == (1300, 3500)
    recon = reconstruct(sorted(events, key=lambda e: e.t), load_probe_set().decoder, "vhe")
    early = [x for x in recon.exits if x.host_resume_t == 2300]
    assert len(early) == 1 and early[0].vcpu == 3 and early[0].d_end == 2600

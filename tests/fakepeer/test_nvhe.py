"""nVHE: hyp probes move to the EL2 VA of this boot at the first host stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakepeer import kernel
from tests.fakepeer.peers import Hit, Run, Say
from tests.fakepeer.recording import record

pytestmark = pytest.mark.fakepeer

STOP = "vgic_queue_irq_unlock"
HYP = ("guest_exit_nvhe", "guest_eret_nvhe")


def script() -> list[Hit | Run | Say]:
    return [
        Say(kernel.ready("nvhe")),
        Run(HYP[0]),  # before any host stop: the plugin does not know the EL2 address yet
        Hit(STOP, el=1, hcr=0),  # the host (EL1, stage 2 off): relocation happens here
        Run(HYP[0]),
        Run(HYP[1]),
        Hit(STOP, el=1, hcr=1),  # L2 (stage 2 on)
        Run(HYP[0]),
        Hit(STOP, el=2),  # hyp code
        Say(kernel.ground_truth()),
        Say(kernel.done()),
    ]


def test_hyp_probes_are_relocated_once_and_stamped(tmp_path: Path) -> None:
    res = kernel.resolution("nvhe")
    hyp = {p.name: p for p in res.probes.probes if p.spec.hyp}
    assert set(HYP) <= set(hyp)
    rec = record(
        tmp_path, script(), kvm_mode="nvhe", hyp_delta=kernel.HYP_DELTA, vbar_el2=kernel.VBAR_EL2
    )
    assert rec.result.ended_by == "ground-truth" and rec.result.error is None
    meta = rec.result.meta
    assert meta.hyp_va_delta == kernel.HYP_DELTA and meta.vbar_el2 == kernel.VBAR_EL2
    assert meta.host_el == 1
    moved = {p.name: p for p in meta.probes if p.hyp}
    assert moved.keys() == hyp.keys()
    for name, p in moved.items():
        assert p.address == p.break_address == hyp[name].address + kernel.HYP_DELTA
    stamped = (rec.raw / "probes.txt").read_text().split()
    assert f"{hyp[HYP[0]].address + kernel.HYP_DELTA:x}" in stamped
    assert f"{hyp[HYP[0]].address:x}" not in stamped
    # The translation cache flushed once (a breakpoint in and out), after the arming.
    first_hyp = next(p for p in res.probes.probes if p.spec.hyp)
    flush = f"gdb.break-insert {first_hyp.address + kernel.HYP_DELTA:#x}"
    assert rec.machine.calls.count(flush) == 1
    assert rec.machine.calls[rec.machine.calls.index(flush) + 1].startswith("gdb.break-delete")
    # Stamped only once relocated: the first run of guest_exit_nvhe is not in the trace.
    assert meta.merge is not None
    per_probe = meta.merge.per_probe
    assert per_probe[HYP[0]] == 2 and per_probe[HYP[1]] == 1
    assert [h["world"] for h in rec.hits()] == ["l1-host", "l2-guest", "l1-hyp"]
    assert meta.stops == 3 and meta.discarded_non_host == 2


def test_vbar_that_is_not_the_host_vector_is_refused(tmp_path: Path) -> None:
    rec = record(tmp_path, script(), kvm_mode="nvhe", hyp_delta=kernel.HYP_DELTA, vbar_el2=0x1234)
    assert rec.result.ended_by == "error"
    assert rec.result.incomplete_reason is not None
    assert rec.result.incomplete_reason.startswith("VBAR_EL2 0x1234 is not the nVHE host vector")
    assert "kvm-arm.mode=nvhe" in rec.result.incomplete_reason
    rec.assert_nothing_left()


def test_plugin_values_stop_only_to_relocate(tmp_path: Path) -> None:
    """--plugin-values: no probe stops for values, but the hyp probes still learn their
    EL2 addresses at the first host stop, at relocation-only breakpoints: the one hit
    stays until its next hit (GDB's step over it flushes QEMU's translations after the
    probe file was rewritten, stops.py), the others go at once; nothing is read."""
    res = kernel.resolution("nvhe", plugin_values=True)
    assert res.probes.stop_probes() == []
    relocation = [p for p in res.probes.probes if p.spec.mode == "stop"]
    steps: list[Hit | Run | Say] = [
        Say(kernel.ready("nvhe")),
        Hit(STOP, el=1, hcr=0),  # relocation happens here
        Run(HYP[0]),
        Hit(STOP, el=1, hcr=0),  # its breakpoint goes
        Run(HYP[0]),
        Say(kernel.ground_truth()),
        Say(kernel.done()),
    ]
    rec = record(
        tmp_path,
        steps,
        kvm_mode="nvhe",
        res=res,
        opts=kernel.options(tmp_path, "nvhe", plugin_values=True),
        hyp_delta=kernel.HYP_DELTA,
        vbar_el2=kernel.VBAR_EL2,
    )
    assert rec.result.ended_by == "ground-truth" and rec.result.error is None
    meta = rec.result.meta
    assert meta.hyp_va_delta == kernel.HYP_DELTA and meta.plugin_values is True
    calls = rec.machine.calls
    inserted = [c for c in calls if c.startswith("gdb.break-insert")]
    assert inserted[: len(relocation)] == [f"gdb.break-insert {p.address:#x}" for p in relocation]
    assert rec.machine.breakpoints == {}  # every relocation breakpoint removed
    assert rec.hits() == [] and meta.stops == 2
    assert meta.merge is not None and meta.merge.per_probe[HYP[0]] == 2
    programs = [ln for ln in (rec.raw / "probes.txt").read_text().splitlines() if ln[:2] == "c "]
    assert programs and all(
        ln.split()[2] != "@hcr" or ln.split()[3] == "HCR_EL2" for ln in programs
    )

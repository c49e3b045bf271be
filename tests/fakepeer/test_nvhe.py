"""nVHE: hyp probes move to the EL2 VA of this boot at the first host stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakepeer import kernel
from tests.fakepeer.peers import Capture, Hit, Run, Say
from tests.fakepeer.recording import Recorded, record

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


def _plugin_script() -> list[Hit | Run | Capture | Say]:
    return [
        Say(kernel.ready("nvhe")),
        Run(HYP[0]),  # before the move: not stamped
        Capture(STOP, el=1, hcr=1),  # L2 (stage 2 on): VBAR_EL2 is the guest vector
        Capture(STOP, el=1, hcr=0),  # the host: the plugin moves the hyp probes here
        Run(HYP[0]),
        Run(HYP[1]),
        Say(kernel.ground_truth()),
        Say(kernel.done()),
    ]


def _plugin_record(tmp_path: Path, **machine: int) -> Recorded:
    res = kernel.resolution("nvhe", plugin_values=True)
    assert res.probes.stop_probes() == []
    return record(
        tmp_path,
        _plugin_script(),
        kvm_mode="nvhe",
        res=res,
        opts=kernel.options(tmp_path, "nvhe", plugin_values=True),
        **{"hyp_delta": kernel.HYP_DELTA, "vbar_el2": kernel.VBAR_EL2, **machine},
    )


def test_plugin_values_place_the_hyp_probes_without_a_stop(tmp_path: Path) -> None:
    """--plugin-values (plugin API 4): the plugin reads VBAR_EL2 at the first host run of
    a probe with captures and moves the hyp probes itself (tk_timebase.c relocate_hyp);
    the recorder learns the delta from its TKH line. No breakpoint, no stop."""
    rec = _plugin_record(tmp_path)
    assert rec.result.ended_by == "ground-truth" and rec.result.error is None
    meta = rec.meta_file()
    assert meta["hyp_va_delta"] == kernel.HYP_DELTA and meta["vbar_el2"] == kernel.VBAR_EL2
    assert meta["plugin_values"] is True and meta["stops"] == 0
    assert not [c for c in rec.machine.calls if c.startswith("gdb.break-insert")]
    assert rec.hits() == []
    per_probe = meta["merge"]["per_probe"]
    assert per_probe[HYP[0]] == 1 and per_probe[HYP[1]] == 1  # the early run is not stamped
    moved = {p["name"]: p["address"] for p in meta["probes"] if p["hyp"]}
    hyp = {p.name: p for p in kernel.resolution("nvhe").probes.probes if p.spec.hyp}
    assert moved == {n: p.address + kernel.HYP_DELTA for n, p in hyp.items()}
    lines = (rec.raw / "probes.txt").read_text().splitlines()
    assert f"h {kernel.HOST_VECTOR:x}" in lines
    assert {f"k {p.address:x}" for p in hyp.values()} <= set(lines)
    programs = [ln for ln in lines if ln[:2] == "c "]
    assert programs and all(
        ln.split()[2] != "@hcr" or ln.split()[3] == "HCR_EL2" for ln in programs
    )


def test_plugin_vbar_that_is_not_the_host_vector_is_refused(tmp_path: Path) -> None:
    rec = _plugin_record(tmp_path, vbar_el2=0x1234)
    assert rec.result.ended_by == "error"
    reason = rec.result.incomplete_reason or ""
    assert reason.startswith("VBAR_EL2 0x1234 (read by the plugin) is not the nVHE host vector")
    assert "kvm-arm.mode=nvhe" in reason
    rec.assert_nothing_left()


def test_hyp_probes_translated_before_the_move_are_refused(tmp_path: Path) -> None:
    """A hyp probe inside a block QEMU translated before the plugin moved it would never
    be stamped: the recording says so instead of missing its events quietly."""
    rec = _plugin_record(tmp_path, stale_hyp_probes=2)
    assert rec.result.ended_by == "error"
    reason = rec.result.incomplete_reason or ""
    assert reason.startswith("2 nVHE hyp probes lay in code QEMU translated before")
    assert "--no-plugin-values" in reason
    assert rec.result.meta.hyp_va_delta == kernel.HYP_DELTA  # the trace is still usable
    rec.assert_nothing_left()

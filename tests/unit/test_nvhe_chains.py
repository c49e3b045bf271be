"""nVHE chains from hand-made event streams (docs/phases.md, "Correlation rules", "nVHE").

Under nVHE the world switch runs at EL2 and the host kernel at EL1, so the exit has a real
EL2 -> EL1 return: B is the hyp vector -> ``__kvm_nvhe___guest_exit``, C that guest exit ->
the host's resume after the ``hvc`` in ``kvm_arm_vcpu_enter_exit``, D ``handle_exit`` ->
the vCPU's next ``kvm_vgic_flush_hwstate``. Under VHE the same events give a B that ends
at the host resume and a C of zero length (``Exit.spans``). The streams use the nVHE
probes' names from ``configs/probes/linux-6.1.toml``; the builder goes by their roles.
"""

from __future__ import annotations

import io

import pytest

from tests.unit.test_sources import FRAME_A, FRAME_B, ev, queue
from tracekit.export.perfetto import export_events
from tracekit.export.reader import parse_trace
from tracekit.model.chains import Chain, Exit, Span
from tracekit.model.events import RawEvent
from tracekit.model.incremental import reconstruct
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

WFI_ESR = 0x04000000  # EC 0x01 (WFx)
#: The nVHE probes of the stream, by role: each must exist with this role in the set.
NVHE_PROBES = {
    "hyp_vector_irq_nvhe": "vector_irq",
    "hyp_vector_sync_nvhe": "vector_sync",
    "guest_exit_nvhe": "guest_exit",
    "host_resume_nvhe": "host_resume",
    "guest_eret_nvhe": "eret",
}


def lr_write(t: int, cpu: int, intid: int) -> RawEvent:
    return RawEvent(t, cpu, "gic", "gicv3_ich_lr_write", "lr_write", "",
                    {"lr": 0, "vintid": intid, "state": 1, "hw": 0})  # fmt: skip


def ack(t: int, cpu: int, intid: int) -> RawEvent:
    return RawEvent(t, cpu, "gic", "gicv3_icv_iar_read", "ack", "", {"intid": intid})


def entry(t: int, cpu: int, vcpu: int, intid: int | None = None) -> list[RawEvent]:
    """Flush (E starts), optional LR write, enter (F starts), eret at EL2 (F ends)."""
    out = [ev(t, cpu, "kvm_vgic_flush_hwstate", "flush", vcpu=vcpu)]
    if intid is not None:
        out.append(lr_write(t + 100, cpu, intid))
    return [
        *out,
        ev(t + 400, cpu, "enter_guest", "enter"),
        ev(t + 600, cpu, "guest_eret_nvhe", "eret"),
    ]


def nvhe_exit(t: int, cpu: int, vcpu: int, *, wfi: bool = False) -> list[RawEvent]:
    """Hyp vector at EL2 (t), __guest_exit at EL2 (t+16), the host back at EL1 after the
    eret (t+416: C is 400 ns), handle_exit (t+600)."""
    vector = (
        ("hyp_vector_sync_nvhe", "vector_sync") if wfi else ("hyp_vector_irq_nvhe", "vector_irq")
    )
    code = {"exit_code": 2, "esr": WFI_ESR} if wfi else {"exit_code": 0, "esr": 0}
    out = [
        ev(t, cpu, *vector),
        ev(t + 16, cpu, "guest_exit_nvhe", "guest_exit"),
        ev(t + 416, cpu, "host_resume_nvhe", "host_resume"),
        ev(t + 600, cpu, "handle_exit", "handle_exit", vcpu=vcpu, **code),
    ]
    if wfi:
        out.append(ev(t + 620, cpu, "kvm_handle_wfx", "exit_handler"))
    return out


def irqfd_stream() -> list[RawEvent]:
    """vCPU0 runs on CPU0; an irqfd on CPU1 queues INTID 40 and kicks it (A: 1000-1200);
    the kick's IRQ exit (B 1300-1316, C 1316-1716 under nVHE, D 1900-2500), the entry
    that injects it (E 2500-2900, F 2900-3100) and the guest's acknowledgement."""
    return [
        *entry(100, 0, 0),
        ev(1000, 1, "irqfd_wakeup", "source_irqfd", frame=FRAME_B),
        queue(1100, 1, 40, 0, {"irqfd_wakeup": (3, FRAME_B)}),
        ev(1200, 1, "kvm_vcpu_kick", "kick", vcpu=0),
        *nvhe_exit(1300, 0, 0),
        *entry(2500, 0, 0, intid=40),
        ack(3300, 0, 40),
    ]


def chain_of(events: list[RawEvent], mode: str) -> Chain:
    recon = reconstruct(sorted(events, key=lambda e: e.t), load_probe_set().decoder, mode)
    assert recon.kvm_mode == mode
    (chain,) = recon.chains
    return chain


def spans(chain: Chain) -> dict[str, tuple[int, int]]:
    return {p: (s.start, s.end) for p, s in chain.phases.items()}


def test_the_stream_uses_the_nvhe_probes_roles() -> None:
    """The names above are the probe set's nVHE probes, with the roles the builder reads."""
    roles = {p.name: (p.role, p.kvm_modes) for p in load_probe_set().probes}
    for name, role in NVHE_PROBES.items():
        assert roles[name][0] == role, name
        assert "nvhe" in roles[name][1] and "vhe" not in roles[name][1], name


def test_nvhe_phases_b_ends_at_guest_exit_and_c_runs_to_the_host_resume() -> None:
    c = chain_of(irqfd_stream(), "nvhe")
    assert c.complete, c.missing
    assert (c.cls, c.intid, c.vcpu, c.source_kind) == ("virtual", 40, 0, "irqfd")
    assert spans(c) == {
        "A": (1000, 1200),
        "B": (1300, 1316),  # the hyp vector -> __kvm_nvhe___guest_exit, at EL2
        "C": (1316, 1716),  # EL2 -> EL1: nonzero under nVHE
        "D": (1900, 2500),  # handle_exit -> this vCPU's next flush
        "E": (2500, 2900),  # flush -> kvm_arm_vcpu_enter_exit
        "F": (2900, 3100),  # -> the eret in __kvm_nvhe___guest_enter
    }
    assert c.exit is not None and c.exit.vector == "irq" and c.exit_reason == "IRQ"
    assert c.ack.t == 3300 and c.lr == 0


def test_the_same_stream_under_vhe_has_a_zero_length_c() -> None:
    """VHE reads the same boundaries differently: B runs to the host resume, C is empty
    (the host kernel is already at EL2); A, D, E, F do not depend on the mode."""
    nvhe, vhe = spans(chain_of(irqfd_stream(), "nvhe")), spans(chain_of(irqfd_stream(), "vhe"))
    assert vhe["B"] == (1300, 1716)
    assert vhe["C"] == (1716, 1716)
    assert {p: vhe[p] for p in "ADEF"} == {p: nvhe[p] for p in "ADEF"}
    # In both modes B and C tile the exit from the vector to the host resume.
    for s in (nvhe, vhe):
        assert s["B"][0] == 1300 and s["B"][1] == s["C"][0] and s["C"][1] == 1716


def test_nvhe_exporter_draws_a_nonzero_c_titled_for_nvhe() -> None:
    buf = io.BytesIO()
    stream = sorted(irqfd_stream(), key=lambda e: e.t)
    export_events(buf, stream, load_probe_set().decoder, {}, "nvhe")
    content = parse_trace(buf.getvalue())
    assert content.problems == [] and not content.unterminated_flows()
    cs = [s for s in content.slices if s.name.startswith("C EL2 -> host kernel")]
    # One C on the CPU's exit slice, one in the chain.
    assert {s.name for s in cs} == {"C EL2 -> host kernel (nVHE: eret EL2 -> EL1)"}
    assert sorted(s.track for s in cs) == ["INTID 40 -> vCPU0 (irqfd (KVM_IRQFD))", "L1 CPU0"]
    assert all((s.start, s.end) == (1316, 1716) for s in cs)


def test_nvhe_d_of_a_halted_vcpu_ends_at_its_own_flush_on_another_cpu() -> None:
    """vCPU0 halts in WFI on CPU1; vCPU1 then runs on CPU1 (its flush must not end vCPU0's
    D); the timer wakes vCPU0 on CPU0, whose flush ends D. B and C stay on CPU1."""
    events = [
        *entry(100, 1, 0),
        *nvhe_exit(1000, 1, 0, wfi=True),
        *entry(2000, 1, 1),
        ev(3000, 0, "kvm_timer_vcpu_load", "source_timer", frame=FRAME_A),
        queue(3100, 0, 30, 0, {"kvm_timer_vcpu_load": (4, FRAME_A)}),
        ev(3200, 0, "kvm_vcpu_kick", "kick", vcpu=0),
        *entry(3500, 0, 0, intid=30),
        ack(4300, 0, 30),
    ]
    c = chain_of(events, "nvhe")
    assert c.complete, c.missing
    assert c.exit_reason == "WFx" and c.cls == "hardware"
    s = spans(c)
    assert (s["B"], s["C"], s["D"]) == ((1000, 1016), (1016, 1416), (1600, 3500))
    assert (s["E"], s["F"]) == ((3500, 3900), (3900, 4100))
    ex = c.exit
    assert ex is not None and (ex.cpu, ex.handle_cpu, ex.d_cpu) == (1, 1, 0)
    assert ex.cpu_taken_t == 2000 and not ex.d_on_one_cpu
    # Under VHE only B and C change.
    v = spans(chain_of(events, "vhe"))
    assert (v["B"], v["C"]) == ((1000, 1416), (1416, 1416))
    assert {p: v[p] for p in "ADEF"} == {p: s[p] for p in "ADEF"}


@pytest.mark.parametrize(
    ("hits", "nvhe", "vhe"),
    [
        # (vector, __guest_exit, host resume) times. Every hit: B and C as above.
        ((10, 26, 426), {"B": (10, 26), "C": (26, 426)}, {"B": (10, 426), "C": (426, 426)}),
        # The vector hit lost: B starts at __guest_exit (zero length under nVHE).
        ((None, 26, 426), {"B": (26, 26), "C": (26, 426)}, {"B": (26, 426), "C": (426, 426)}),
        # __guest_enter returned early (no guest exit at EL2): under nVHE neither B nor C
        # has its EL2 end, under VHE both are marks at the host resume.
        ((None, None, 426), {}, {"B": (426, 426), "C": (426, 426)}),
        # No host resume: no C in either mode; B only where its end is known.
        ((10, 26, None), {"B": (10, 26)}, {}),
    ],
)
def test_exit_spans_per_mode(
    hits: tuple[int | None, int | None, int | None],
    nvhe: dict[str, tuple[int, int]],
    vhe: dict[str, tuple[int, int]],
) -> None:
    vector_t, guest_exit_t, host_resume_t = hits
    ex = Exit(
        0,
        0,
        vector_t=vector_t,
        guest_exit_t=guest_exit_t,
        host_resume_t=host_resume_t,
        handle_exit_t=600,
        d_end=900,
    )
    for mode, want in (("nvhe", nvhe), ("vhe", vhe)):
        got = ex.spans(mode)
        assert got.pop("D") == Span(600, 900), mode
        assert {p: (s.start, s.end) for p, s in got.items()} == want, mode

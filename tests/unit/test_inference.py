"""Stop-free values: QEMU exception records, their pairing with vector probes, and the
inference rules of model/context.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import ConfigError
from tracekit.model.context import infer_values
from tracekit.model.events import RawEvent
from tracekit.probes.info import ProbeInfo
from tracekit.probes.spec import load_probe_set
from tracekit.record.merge import MergeStats, merge
from tracekit.record.qemulog import ExceptionRecord, LogStats, parse_qemu_log

pytestmark = pytest.mark.unit

# QEMU 7.2 `-d int` output (target/arm/helper.c), as seen in a real recording.
EXCEPTION_LOG = """\
Taking exception 11 [Hypervisor Call] on CPU 0
...from EL1 to EL2
...with ESR 0x16/0x5a000000
...with ELR 0x40001234
...to EL2 PC 0xffff800008012400 PSTATE 0x3c9
Taking exception 13 [Secure Monitor Call] on CPU 1
...from EL2 to EL3
...with ESR 0x17/0x5e000000
...handled as PSCI call
Taking exception 5 [IRQ] on CPU 1
...from EL1 to EL2
...with ESR 0x0/0x0
...with ELR 0x40000010
...to EL2 PC 0xffff800008012480 PSTATE 0x3c9
"""


def test_exception_records_parse_and_psci_calls_are_not_half_records() -> None:
    st = LogStats()
    items = list(parse_qemu_log(EXCEPTION_LOG.splitlines(), st))
    assert items == [
        ExceptionRecord(0, 11, "Hypervisor Call", 1, 2, 0xFFFF800008012400, 0x5A000000, 0x40001234),
        ExceptionRecord(1, 5, "IRQ", 1, 2, 0xFFFF800008012480, 0, 0x40000010),
    ]
    assert st.exceptions == 2


def test_exception_pairs_with_its_vector_probe_only() -> None:
    probes = [
        ProbeInfo(
            name="sync",
            address=0xFFFF800008012400,
            phase="B",
            role="vector_sync",
            mode="timing",
            implies={"exit_code": 2},
        ),
        ProbeInfo(
            name="irq",
            address=0xFFFF800008012480,
            phase="B",
            role="vector_irq",
            mode="timing",
            implies={"exit_code": 0},
        ),
        ProbeInfo(name="other", address=0x500, phase="D", role="x", mode="timing"),
    ]
    log = [
        *EXCEPTION_LOG.splitlines()[:5],
        "TKP 0 ffff800008012400 100",  # the vector right after its exception: paired
        *EXCEPTION_LOG.splitlines()[9:],
        "TKP 1 500 200",  # not the vector the exception went to: counted, not paired
        "TKP 1 ffff800008012480 300",
    ]
    st = MergeStats()
    events = merge([], log, probes, st)
    assert [(e.name, dict(e.values)) for e in events] == [
        ("sync", {"exit_code": 2, "excp": 11, "esr": 0x5A000000, "elr": 0x40001234}),
        ("other", {}),
        ("irq", {"exit_code": 0}),
    ]
    assert st.exceptions_paired == 1 and st.exceptions_unpaired == 1


def _ev(t: int, cpu: int, name: str, role: str, **values: int) -> RawEvent:
    return RawEvent(t, cpu, "probe", name, role, "", values)


RULES = {
    "handle_exit": {"exit_code": "exit_vector", "esr": "exit_vector", "vcpu": "resident_vcpu"},
    "flush": {"vcpu": "resident_vcpu"},
    "kick": {"vcpu": "queued_target"},
}


def test_resident_vcpu_follows_load_and_put_and_exits_follow_the_vcpu() -> None:
    events = [
        _ev(1, 0, "load", "vcpu_load", vcpu=1),
        _ev(2, 0, "flush", "flush"),
        _ev(3, 0, "enter", "enter"),
        _ev(4, 0, "sync", "vector_sync", exit_code=2, esr=0x5A000000),
        # Preempted between the exit and handle_exit, and migrated to CPU 1.
        _ev(5, 0, "put", "vcpu_put"),
        _ev(6, 0, "load", "vcpu_load", vcpu=0),
        _ev(7, 1, "load", "vcpu_load", vcpu=1),
        _ev(8, 1, "handle_exit", "handle_exit"),
        _ev(9, 0, "handle_exit", "handle_exit"),  # vCPU 0 never exited: unknown exit
    ]
    result = infer_values(events, RULES, irq_exit_code=0)
    got = [dict(e.values) for e in result.events if e.role in ("flush", "handle_exit")]
    assert got == [{"vcpu": 1}, {"vcpu": 1, "exit_code": 2, "esr": 0x5A000000}, {"vcpu": 0}]
    assert result.stats["exit_code.unknown"] == 1 and result.stats["vcpu.inferred"] == 3


def test_early_return_from_guest_entry_is_an_irq_exit_without_syndrome() -> None:
    events = [
        _ev(1, 0, "load", "vcpu_load", vcpu=0),
        _ev(2, 0, "sync", "vector_sync", exit_code=2, esr=0x5A000000),
        _ev(3, 0, "handle_exit", "handle_exit"),
        _ev(4, 0, "enter", "enter"),  # __guest_enter returned at once: no vector
        _ev(5, 0, "handle_exit", "handle_exit"),
        _ev(6, 0, "enter", "enter"),
        _ev(7, 0, "irq", "vector_irq", exit_code=0, esr=0x123),  # ESR of an IRQ: stale
        _ev(8, 0, "handle_exit", "handle_exit"),
    ]
    result = infer_values(events, RULES, irq_exit_code=0)
    exits = [dict(e.values) for e in result.events if e.role == "handle_exit"]
    assert exits == [
        {"vcpu": 0, "exit_code": 2, "esr": 0x5A000000},
        {"vcpu": 0, "exit_code": 0},
        {"vcpu": 0, "exit_code": 0},
    ]


def test_read_values_are_kept_and_checked() -> None:
    events = [
        _ev(1, 0, "q", "queue", target_vcpu=1),
        _ev(2, 0, "kick", "kick", vcpu=1),
        _ev(3, 0, "q", "queue", target_vcpu=0),
        _ev(4, 0, "kick", "kick", vcpu=1),  # contradicts the rule: reported
    ]
    result = infer_values(events, RULES)
    assert [e.values["vcpu"] for e in result.events if e.role == "kick"] == [1, 1]
    assert result.stats["vcpu.agreed"] == 1 and result.stats["vcpu.disagreed"] == 1
    assert result.disagreements == [("kick", "vcpu", 1, 0, 4)]


def test_kick_after_queues_to_different_vcpus_is_left_unknown() -> None:
    # A timer interrupt queued to vCPU 0 in the middle of a queue to vCPU 1: seen in a
    # real recording, where the kicks then came in the order 1, 0.
    events = [
        _ev(1, 0, "q", "queue", target_vcpu=1),
        _ev(2, 0, "q", "queue", target_vcpu=0),
        _ev(3, 0, "kick", "kick"),
        _ev(4, 0, "kick", "kick"),
        _ev(5, 0, "q", "queue", target_vcpu=0),
        _ev(6, 0, "q", "queue", target_vcpu=0),
        _ev(7, 0, "kick", "kick"),
    ]
    result = infer_values(events, RULES)
    assert [e.values.get("vcpu") for e in result.events if e.role == "kick"] == [None, None, 0]
    assert result.stats["vcpu.unknown"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('mode = "timing"\ncapture.vcpu = "x0"', "captures vcpu but is mode 'timing'"),
        ('mode = "timing"\ncapture.vcpu = "x0"\ninfer.vcpu = "guess"', "rule 'guess' unknown"),
    ],
)
def test_probe_set_rejects_unread_or_unknown_inference(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        'kernel = "6.1"\ndescription = "t"\n[[probe]]\nname = "p"\nsymbol = "s"\n'
        f'phase = "A"\nrole = "path"\n{body}\n'
    )
    with pytest.raises(ConfigError, match=message):
        load_probe_set(str(path))


def test_inferred_probe_stops_only_when_reading_values() -> None:
    spec = next(p for p in load_probe_set().probes if p.name == "handle_exit")
    assert spec.infer and not spec.stops() and spec.stops(read_values=True)


def test_decoder_finds_exit_codes_by_name() -> None:
    decoder = load_probe_set().decoder
    assert decoder.code("IRQ") == 0 and decoder.code("TRAP") == 2 and decoder.code("nope") is None

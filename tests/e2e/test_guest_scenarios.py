"""Every L2 scenario runs in a real nested stack and its two sides agree (issue 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli import run_tracekit

pytestmark = pytest.mark.e2e


def guest_run(scenario: str, count: int, vcpus: int = 2) -> dict[str, Any]:
    proc = run_tracekit(
        "guest",
        "run",
        "--scenario",
        scenario,
        "--count",
        str(count),
        "--vcpus",
        str(vcpus),
        "--json",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


EXPECTED = {
    # scenario: {(class, intid, vcpu): acked} for count N (2 vCPUs)
    "timer": lambda n: {("hardware", 27, 0): n, ("hardware", 27, 1): n},
    "irqfd": lambda n: {("virtual", 40, 1): n},
    "irqline": lambda n: {("virtual", 41, 0): n},
    "ipi": lambda n: {("ipi", 1, 1): n},
    "exceptions": lambda n: {("hardware", 30, 0): n, ("hardware", 30, 1): n},
    "mixed": lambda n: {
        ("hardware", 27, 0): n,
        ("hardware", 27, 1): n,
        ("hardware", 30, 0): n,
        ("hardware", 30, 1): n,
        ("virtual", 40, 1): n,
        ("virtual", 41, 0): n,
        ("ipi", 1, 1): n,
    },
}


@pytest.mark.parametrize(
    ("scenario", "count"),
    [
        ("timer", 20),
        ("irqfd", 20),
        ("irqline", 20),
        ("ipi", 50),
        ("exceptions", 10),
        ("mixed", 20),
    ],
)
def test_scenario_ground_truth(scenario: str, count: int, guest_assets: object) -> None:
    data = guest_run(scenario, count)
    assert data["ok"] is True and data["errors"] == []
    assert data["l1"]["kvm_mode"] == "vhe"
    got = {(i["class"], i["intid"], i["vcpu"]): i["acked"] for i in data["interrupts"]}
    assert got == EXPECTED[scenario](count)
    for i in data["interrupts"]:
        assert i["sent"] == i["acked"] == count
    if scenario in ("exceptions", "mixed"):
        kinds = {(e["kind"], e["vcpu"]): (e["issued"], e["observed"]) for e in data["exceptions"]}
        for kind in ("hvc", "wfi", "mmio", "sysreg"):
            for vcpu in (0, 1):
                assert kinds[(kind, vcpu)] == (count, count)
    if scenario == "ipi":
        (sgi,) = data["interrupts"]
        assert sgi["from_vcpu"] == 0 and sgi["sent"] == 50 and sgi["acked"] == 50

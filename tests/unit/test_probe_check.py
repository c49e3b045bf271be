"""`probes check`'s capture rules: a capture's width must fit the BTF member it reads."""

from __future__ import annotations

import pytest

from tracekit.errors import SymbolError
from tracekit.probes.check import _capture

pytestmark = pytest.mark.unit

MEMBERS = {
    "vgic_irq.intid": (56, 4),
    "vgic_irq.hw": (64, 1),
    "vgic_irq.target_vcpu": (48, 8),
    "kvm_vcpu.vcpu_idx": (40, 4),
}


def info(path: str) -> tuple[int, int]:
    if path not in MEMBERS:
        raise SymbolError(f"member {path}")
    return MEMBERS[path]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("u32 [x1 + vgic_irq.intid]", ""),
        ("u8 [x1 + vgic_irq.hw]", ""),
        ("u32 [[x1 + vgic_irq.target_vcpu] + kvm_vcpu.vcpu_idx]", ""),
        ("x30", ""),
        ("u64 [[x29] + 8]", ""),
        ("u8 [x1 + vgic_irq.intid]", "u8 reads 1 bytes of vgic_irq.intid, which is 4"),
        (
            "u32 [[x1 + vgic_irq.intid] + kvm_vcpu.vcpu_idx]",
            "vgic_irq.intid is 4 bytes, followed as a pointer",
        ),
        ("u32 [x1 + vgic_irq.nope]", "BTF has no member vgic_irq.nope"),
    ],
)
def test_capture_widths(expr: str, problem: str) -> None:
    got = _capture("v", expr, info).problem
    assert (problem in got) if problem else got == "", got

"""Which world a breakpoint hit ran in (pure)."""

from __future__ import annotations

__all__ = ["host_el", "world"]


def host_el(kvm_mode: str) -> int:
    """The exception level L1's host kernel runs at."""
    return 2 if kvm_mode == "vhe" else 1


def world(el: int, hcr: int | None, kvm_mode: str) -> str:
    """L1 host, L1 hyp (nVHE EL2), or the L2 guest.

    VHE: the host kernel runs at EL2 (E2H); L2 runs at EL1/EL0. nVHE: the host kernel runs
    at EL1 with stage 2 off (HCR_EL2.VM = 0), L2 at EL1/EL0 with HCR_EL2.VM = 1, and KVM's
    hyp code at EL2. Guest and host can share virtual addresses, so the PC alone is not
    enough.
    """
    if kvm_mode == "vhe":
        return "l1-host" if el == 2 else "l2-guest" if el in (0, 1) else "unknown"
    if el == 2:
        return "l1-hyp"
    if el in (0, 1) and hcr is not None:
        return "l2-guest" if hcr & 1 else "l1-host"
    return "unknown"

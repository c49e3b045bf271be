"""Recovering a pointer argument from the first access through it (probes/pointer.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tracekit.errors import SymbolError
from tracekit.gdb.mi import parse_value_array
from tracekit.probes.pointer import PointerSite, find_pointer_site

pytestmark = pytest.mark.unit

ENTRY = 0x1000

# kvm_arch_vcpu_load's prologue in Debian's 6.1.0-56-cloud-arm64 (from the Image).
VCPU_LOAD = [
    0xD503201F,  # nop                      (patchable ftrace entry)
    0xD503201F,  # nop
    0xD503233F,  # paciasp
    0xA9BB7BFD,  # stp x29, x30, [sp, #-80]!
    0x910003FD,  # mov x29, sp
    0xA90153F3,  # stp x19, x20, [sp, #16]
    0xAA0003F3,  # mov x19, x0
    0xA9025BF5,  # stp x21, x22, [sp, #32]
    0x2A0103F5,  # mov w21, w1
    0xD538D096,  # mrs x22, tpidr_el1
    0xF9441C01,  # ldr x1, [x0, #2104]      <- the site
]
# kvm_vcpu_kick: x0 moves into a call before any access through it.
VCPU_KICK = [
    0xD503201F,
    0xD503201F,
    0xD503233F,
    0xA9BE7BFD,  # stp x29, x30, [sp, #-32]!
    0x910003FD,
    0xA90153F3,
    0xAA0003F3,  # mov x19, x0
    0x9101C000,  # add x0, x0, #0x70
    0x940134FF,  # bl kvm_vcpu_wake_up      <- a branch ends the search
    0xF9400260,  # ldr x0, [x19]
]


def _reader(words: list[int]) -> Callable[[int], tuple[int, ...]]:
    def read(address: int) -> tuple[int, ...]:
        return (words[(address - ENTRY) // 4],)

    return read


def test_site_found_in_a_real_prologue() -> None:
    site = find_pointer_site(_reader(VCPU_LOAD), ENTRY, 0, "t")
    assert site == PointerSite(ENTRY + 40, 0x838)


def test_copies_and_additions_are_followed() -> None:
    words = [
        0xAA0003F3,  # mov x19, x0
        0x91004260,  # add x0, x19, #0x10
        0xD2800013,  # mov x19, #0  (x19 no longer the pointer)
        0xB9400C01,  # ldr w1, [x0, #12]
    ]
    site = find_pointer_site(_reader(words), ENTRY, 0, "t")
    assert site == PointerSite(ENTRY + 12, 0x10 + 12)


def test_overwritten_register_is_not_followed() -> None:
    words = [0xF9400000, 0xF9400401]  # ldr x0, [x0] ; ldr x1, [x0, #8]
    site = find_pointer_site(_reader(words), ENTRY, 0, "t")
    assert site == PointerSite(ENTRY, 0)  # the first load is through x0 itself
    words = [0xF9400020, 0xF9400401]  # ldr x0, [x1] ; ldr x1, [x0, #8]: x0 replaced
    with pytest.raises(SymbolError, match="no memory access based on x0"):
        find_pointer_site(_reader([*words, 0xD65F03C0]), ENTRY, 0, "t")


def test_no_site_before_a_branch_is_an_error_naming_the_probe() -> None:
    with pytest.raises(SymbolError, match=r"probe kick: pointer\.vcpu_ptr"):
        find_pointer_site(_reader(VCPU_KICK), ENTRY, 0, "probe kick: pointer.vcpu_ptr")


@pytest.mark.parametrize(
    ("text", "n", "want"),
    [
        ("{1, 2, 18446744071566262473}", 3, [1, 2, 18446744071566262473]),
        ("{5}", 1, [5]),
        ("{1, 2}", 3, None),
        ("<error: Cannot access memory>", 1, None),
        ("{1, 0 <repeats 11 times>}", 2, None),  # never produced: print repeats unlimited
    ],
)
def test_mi_value_array(text: str, n: int, want: list[int] | None) -> None:
    assert parse_value_array(text, n) == want

"""Boot-time alternatives: the table, the instructions as the kernel runs them, and the
prologue decoding through them (kernel/alternatives.py, probes/pointer.py, resolve.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tracekit.errors import ConfigError, SymbolError
from tracekit.kernel.alternatives import (
    CB_BIT,
    CpuCaps,
    RunningText,
    find_table,
    parse_table,
    running_text,
)
from tracekit.kernel.kallsyms import Symbol, SymbolTable
from tracekit.probes.pointer import PointerSite, find_pointer_site
from tracekit.probes.resolve import resolve_probes
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

BASE = 0xFFFF800080000000
FUNC = BASE + 0x1000
NOPS_CB = BASE + 0x3000  # alt_cb_patch_nops
OTHER_CB = BASE + 0x3100  # e.g. kvm_update_va_mask: computes the code at boot
REPL = BASE + 0x4000  # .altinstr_replacement
BUILDER = BASE + 0x5000  # apply_boot_alternatives
REGION = BASE + 0x6000  # its struct alt_region, zero in the file
RELA = BASE + 0x7000
TABLE = BASE + 0x8000
NOP = 0xD503201F
ALWAYS_SYSTEM, NESTED_VIRT, VHE = 1, 39, 51

# kvm_arch_vcpu_load's prologue in Debian's 6.12.95+deb12-cloud-arm64, as in the Image.
VCPU_LOAD_612 = [
    0xD503201F,  # nop                         (patchable ftrace entry)
    0xD503201F,  # nop
    0x14000049,  # b .+0x124     alt_cb_patch_nops, ALWAYS_SYSTEM: a NOP once booted
    0xD503233F,  # paciasp
    0xA9BA7BFD,  # stp x29, x30, [sp, #-96]!
    0x910003FD,  # mov x29, sp
    0xA90153F3,  # stp x19, x20, [sp, #16]
    0xAA0003F3,  # mov x19, x0
    0xA9025BF5,  # stp x21, x22, [sp, #32]
    0x2A0103F5,  # mov w21, w1
    0xF9001BF7,  # str x23, [sp, #48]
    0xD503201F,  # nop           alternative: b .+0x104 if HAS_NESTED_VIRT
    0xF9469A76,  # ldr x22, [x19, #3376]      <- the site (vcpu->arch.hw_mmu)
]


def _entry(at: int, orig: int, repl: int, cap: int, orig_len: int, alt_len: int) -> bytes:
    return struct.pack("<iiHBB", orig - at, repl - (at + 4), cap, orig_len, alt_len)


def _kernel(
    *, kallsyms: bool = True, nested: bool = True
) -> tuple[bytearray, SymbolTable, int, int]:
    img = bytearray(0x10000)
    for i, w in enumerate(VCPU_LOAD_612):
        struct.pack_into("<I", img, FUNC - BASE + 4 * i, w)
    struct.pack_into("<I", img, REPL - BASE, 0x14000041)  # b .+0x104 (from REPL)
    struct.pack_into("<I", img, REPL - BASE + 4, 0xD53CD057)  # mrs x23, tpidr_el2
    rows = [
        (FUNC + 8, NOPS_CB, ALWAYS_SYSTEM | CB_BIT, 4, 0),
        (FUNC + 0x40, OTHER_CB, ALWAYS_SYSTEM | CB_BIT, 4, 0),
        (FUNC + 0x44, REPL + 4, VHE, 4, 4),
    ]
    if nested:
        rows.append((FUNC + 0x2C, REPL, NESTED_VIRT, 4, 4))
    for i, row in enumerate(rows):
        at = TABLE + 12 * i
        img[at - BASE : at - BASE + 12] = _entry(at, *row)
    end = TABLE + 12 * len(rows)
    names = [
        (FUNC, "kvm_arch_vcpu_load"),
        (NOPS_CB, "alt_cb_patch_nops"),
        (OTHER_CB, "kvm_update_va_mask"),
        (BUILDER, "apply_boot_alternatives"),
        (BUILDER + 0x40, "apply_alternatives_all"),
    ]
    if kallsyms:
        names += [(TABLE, "__alt_instructions"), (end, "__alt_instructions_end")]
    else:  # the table found from apply_boot_alternatives' alt_region and its relocations
        page = (REGION & ~0xFFF) - (BUILDER & ~0xFFF) >> 12
        adrp = 0x90000000 | (page & 3) << 29 | (page >> 2) << 5  # adrp x0, REGION
        add = 0x91000000 | (REGION & 0xFFF) << 10  # add x0, x0, #lo12
        struct.pack_into("<II", img, BUILDER - BASE, adrp, add)
        struct.pack_into("<QQQ", img, RELA - BASE, REGION, 0x403, TABLE)
        struct.pack_into("<QQQ", img, RELA - BASE + 24, REGION + 8, 0x403, end)
    symbols = SymbolTable([Symbol(a, "T", n) for a, n in names], image_base=BASE)
    return img, symbols, TABLE, end


def test_table_entries_resolve_their_offsets() -> None:
    img, _, start, end = _kernel()
    entries = parse_table(bytes(img), BASE, start, end)
    assert [(e.orig, e.repl, e.cpucap, e.callback) for e in entries] == [
        (FUNC + 8, NOPS_CB, ALWAYS_SYSTEM, True),
        (FUNC + 0x40, OTHER_CB, ALWAYS_SYSTEM, True),
        (FUNC + 0x44, REPL + 4, VHE, False),
        (FUNC + 0x2C, REPL, NESTED_VIRT, False),
    ]


@pytest.mark.parametrize("kallsyms", [True, False])
def test_table_found_by_symbol_or_through_relocations(kallsyms: bool) -> None:
    img, symbols, start, end = _kernel(kallsyms=kallsyms)
    found = find_table(bytes(img), symbols)
    assert found is not None and found[:2] == (start, end)
    assert found[2] == (
        "kallsyms" if kallsyms else "apply_boot_alternatives's alt_region (relocations)"
    )


def test_no_table_leaves_the_image_as_it_is() -> None:
    img = bytes(0x2000)
    symbols = SymbolTable([Symbol(BASE + 0x100, "T", "f")], image_base=BASE)
    assert find_table(img, symbols) is None
    text = running_text(img, symbols)
    assert text.table == "none" and text.candidates(BASE + 0x100) == (0,)


def test_instructions_as_the_kernel_runs_them() -> None:
    img, symbols, _, _ = _kernel()
    caps = CpuCaps(applied={ALWAYS_SYSTEM: "ALWAYS_SYSTEM"}, absent={NESTED_VIRT: "NV"})
    text = running_text(bytes(img), symbols, caps)
    assert text.candidates(FUNC + 4) == (NOP,)  # not patched
    assert text.candidates(FUNC + 8) == (NOP,)  # alt_cb_patch_nops, applied
    assert text.candidates(FUNC + 0x2C) == (NOP,)  # cap absent: the original
    assert text.candidates(FUNC + 0x40) == ()  # computed at boot: unknown here
    # undecided cap: the original or the copied replacement, both as they would run
    assert text.candidates(FUNC + 0x44) == (0, 0xD53CD057)
    assert text.instruction(FUNC + 0x44) is None
    assert "cpucap 51" in text.describe(FUNC + 0x44)
    undecided = running_text(bytes(img), symbols)
    assert undecided.candidates(FUNC + 8) == (0x14000049, NOP)


def test_a_copied_branch_keeps_its_target() -> None:
    img, symbols, _, _ = _kernel()
    caps = CpuCaps(applied={ALWAYS_SYSTEM: "", NESTED_VIRT: ""})
    text = running_text(bytes(img), symbols, caps)
    moved = text.candidates(FUNC + 0x2C)
    assert len(moved) == 1 and moved[0] & 0xFC000000 == 0x14000000
    target = REPL + 0x104
    assert FUNC + 0x2C + (moved[0] & 0x3FFFFFF) * 4 == target


def test_vcpu_pointer_found_only_once_boot_patching_is_understood() -> None:
    img, symbols, _, _ = _kernel()
    known = CpuCaps(applied={ALWAYS_SYSTEM: ""}, absent={NESTED_VIRT: ""})
    text = running_text(bytes(img), symbols, known)
    assert find_pointer_site(text.candidates, FUNC, 0, "t") == PointerSite(FUNC + 0x30, 3376)
    # the Image as linked: the branch at +8 ends the search (the failure)
    raw = RunningText(bytes(img), BASE)
    with pytest.raises(SymbolError, match="no memory access based on x0"):
        find_pointer_site(raw.candidates, FUNC, 0, "probe kvm_arch_vcpu_load: pointer.vcpu_ptr")
    # a cpucap nobody decided may branch away before the access: no guess
    unsure = running_text(bytes(img), symbols, CpuCaps(applied={ALWAYS_SYSTEM: ""}))
    with pytest.raises(SymbolError):
        find_pointer_site(unsure.candidates, FUNC, 0, "t")


def test_two_way_sites_keep_what_both_ways_keep() -> None:
    # 6.1's kvm_arch_vcpu_load: mrs x22, tpidr_el1 | tpidr_el2 (VHE) before the access
    # mov x19, x0; mrs x22, tpidr_el1; ldr x1, [x19, #2104]; then ret
    words = {0: 0xAA0003F3, 4: 0xD538D096, 8: 0xF9441E61}

    def read(addr: int) -> tuple[int, ...]:
        return (words[addr], 0xD53CD056) if addr == 4 else (words.get(addr, 0xD65F03C0),)

    assert find_pointer_site(read, 0, 0, "t") == PointerSite(8, 2104)

    def clobbers(addr: int) -> tuple[int, ...]:  # one way overwrites x19
        return (words[addr], 0xD53CD053) if addr == 4 else (words.get(addr, 0xD65F03C0),)

    with pytest.raises(SymbolError):
        find_pointer_site(clobbers, 0, 0, "t")


PROBES = """\
kernel = "test"
description = "test"
[[probe]]
name = "load"
symbol = "kvm_arch_vcpu_load"
phase = "A"
role = "vcpu_load"
mode = "timing"
pointer.vcpu_ptr = "x0"
{others}
[cpucaps.applied]
1 = "ALWAYS_SYSTEM"
[cpucaps.absent]
39 = "HAS_NESTED_VIRT"
"""


def test_resolve_decodes_through_the_probe_sets_cpucaps(tmp_path: Path) -> None:
    img, symbols, _, _ = _kernel()
    others = "".join(
        f'[[probe]]\nname = "{p}"\nsymbol = "alt_cb_patch_nops"\noffset = {4 * i}\n'
        f'phase = "{p}"\nrole = "path"\nmode = "timing"\n'
        for i, p in enumerate("BCDEF")
    )
    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(others=others))
    pset = load_probe_set(str(f))
    assert pset.cpucaps.applied == {1: "ALWAYS_SYSTEM"}
    res = resolve_probes(pset, symbols, bytes(img), lambda m: 0)
    assert res.probes[0].pointer_sites == (("vcpu_ptr", FUNC + 0x30, 3376),)
    f.write_text(PROBES.format(others=others).replace("[cpucaps.absent]", "[cpucaps.applied.x]"))
    with pytest.raises(ConfigError):
        load_probe_set(str(f))
    both = PROBES.format(others=others).replace('39 = "HAS_NESTED_VIRT"', '1 = "again"')
    f.write_text(both)
    with pytest.raises(ConfigError, match="both applied and absent"):
        load_probe_set(str(f))

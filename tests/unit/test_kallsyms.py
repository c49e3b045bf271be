"""Tests for tracekit.kernel.kallsyms: symbol table logic, Image header, the real kernel.

The integration tests read the kernel Image named by ``TRACEKIT_TEST_IMAGE``, or else the one
``tracekit guest build`` cached; without either they fail (never skip).
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import real_image_path
from tracekit.errors import EnvironmentProblem, KernelImageError, SymbolError
from tracekit.kernel.kallsyms import (
    ImageHeader,
    Symbol,
    SymbolTable,
    extract_symbols,
    image_base,
    instruction_at,
    read_image_header,
    symbols_from_image,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "kernel"
REAL_HEADER = DATA / "image-header-6.1.0-56-cloud-arm64.bin"
BASE = 0xFFFF800008000000
NOP = 0xD503201F
PACIASP = 0xD503233F


def make_table(image_base: int | None = BASE) -> SymbolTable:
    return SymbolTable(
        [
            Symbol(BASE + 0x10000, "T", "_stext"),
            Symbol(BASE + 0x10000, "t", "gic_handle_irq"),
            Symbol(BASE + 0x10100, "t", "gic_handle_irq"),
            Symbol(BASE + 0x20000, "T", "handle_exit"),
            Symbol(BASE + 0x20040, "t", "el1_sync"),
            Symbol(BASE + 0x20800, "t", "el1_sync"),
            Symbol(BASE + 0x21000, "W", "weak_thing"),
            Symbol(BASE + 0x30000, "T", "primary_entry"),
            Symbol(BASE + 0x30100, "T", "_einittext"),
        ],
        image_base=image_base,
    )


def make_image(entry_offset: int = 0x30000, size: int = 0x30200) -> bytearray:
    """A synthetic EFI-style Image: ``MZ`` in code0, ``b primary_entry`` in code1."""
    image = bytearray(size)
    branch = 0x14000000 | ((entry_offset - 4) // 4)
    struct.pack_into("<IIQQQ", image, 0, 0xFA405A4D, branch, 0, size, 0b1010)
    image[0x38:0x3C] = b"ARM\x64"
    struct.pack_into("<I", image, 0x3C, 0x40)
    struct.pack_into("<II", image, 0x20000, NOP, PACIASP)
    return image


# ---------------------------------------------------------------------------- symbol table


@pytest.mark.unit
def test_address_kind_and_has() -> None:
    table = make_table()
    assert len(table) == 9
    assert table.address("handle_exit") == BASE + 0x20000
    assert table.kind("handle_exit") == "T"
    assert table.kind("weak_thing") == "W"
    assert table.has("handle_exit")
    assert "handle_exit" in table
    assert not table.has("nope")


@pytest.mark.unit
def test_ambiguous_name_is_reported() -> None:
    table = make_table()
    assert table.addresses("el1_sync") == [BASE + 0x20040, BASE + 0x20800]
    with pytest.raises(SymbolError, match=r"'el1_sync' is ambiguous: 2 addresses.*addresses\(\)"):
        table.address("el1_sync")


@pytest.mark.unit
def test_missing_name_lists_close_names() -> None:
    table = make_table()
    with pytest.raises(SymbolError, match=r"'handle_exitt' not in.*close names: handle_exit"):
        table.address("handle_exitt")
    with pytest.raises(SymbolError, match=r"'handle' not in.*close names: handle_exit"):
        table.addresses("handle")
    with pytest.raises(SymbolError, match="no similar names"):
        table.kind("zzzzzzzzzzzz")


@pytest.mark.unit
def test_symbolize_and_name_at() -> None:
    table = make_table()
    assert table.symbolize(BASE + 0x20000) == "handle_exit"
    assert table.symbolize(BASE + 0x20010) == "handle_exit+0x10"
    assert table.name_at(BASE + 0x20010) == "handle_exit"
    # Several names at one address: prefer a text symbol not starting with "_".
    assert table.symbolize(BASE + 0x10004) == "gic_handle_irq+0x4"
    # Below the first / past the last symbol.
    assert table.symbolize(BASE) == f"0x{BASE:x}"
    assert table.name_at(BASE) is None
    assert table.symbolize(BASE + 0x40000) == f"0x{BASE + 0x40000:x}"
    assert table.name_at(BASE + 0x40000) is None
    assert table.lookup(BASE + 0x20804) == (Symbol(BASE + 0x20800, "t", "el1_sync"), 4)


@pytest.mark.unit
def test_json_round_trip() -> None:
    table = make_table()
    text = table.to_json()
    again = SymbolTable.from_json(text)
    assert list(again) == list(table)
    assert again.image_base == BASE
    data = json.loads(text)
    assert data["symbols"][0] == [BASE + 0x10000, "T", "_stext"]
    # A bare list of rows is accepted too.
    bare = SymbolTable.from_dict([[1, "T", "a"], [5, "t", "b"]])
    assert bare.image_base is None
    assert bare.symbolize(3) == "a+0x2"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other/9", "symbols": []}', "expected 'tracekit-kallsyms/1'"),
        ('{"format": "tracekit-kallsyms/1", "symbols": {}}', "list of"),
        ('{"format": "tracekit-kallsyms/1", "image_base": "x", "symbols": []}', "image_base"),
        ('[[1, "T"]]', "bad symbol cache row"),
        ('[["1", "T", "a"]]', "bad symbol cache row"),
    ],
)
def test_json_errors(text: str, message: str) -> None:
    with pytest.raises(SymbolError, match=message):
        SymbolTable.from_json(text)


# ---------------------------------------------------------------------------- Image header


@pytest.mark.unit
def test_read_real_image_header_slice() -> None:
    header = read_image_header(REAL_HEADER.read_bytes())
    assert header == ImageHeader(
        code0=0xFA405A4D,
        code1=0x144E6346,
        text_offset=0,
        image_size=27983872,
        flags=0xA,
        pe_offset=0x40,
        entry_offset=0x1398D1C,
    )
    assert header.has_pe_header
    assert not header.big_endian
    assert header.page_size == 4096


@pytest.mark.unit
def test_header_without_efi_stub_branches_from_code0() -> None:
    data = bytearray(64)
    struct.pack_into("<I", data, 0, 0x14000000 | 0x100)  # b +0x400
    data[0x38:0x3C] = b"ARM\x64"
    header = read_image_header(bytes(data))
    assert header.entry_offset == 0x400
    assert not header.has_pe_header
    assert header.page_size is None


@pytest.mark.unit
@pytest.mark.parametrize("data", [b"", b"\0" * 64, b"MZ" + b"\0" * 100])
def test_not_an_arm64_image(data: bytes) -> None:
    with pytest.raises(
        KernelImageError, match=r"vmlinuz is not an arm64 Image \(no ARM\\x64 magic"
    ):
        read_image_header(data, source="vmlinuz")


@pytest.mark.unit
def test_image_base_from_entry_branch() -> None:
    image = bytes(make_image())
    assert image_base(image, make_table(image_base=None)) == BASE
    assert image_base(image, make_table(image_base=BASE + 0x1000)) == BASE + 0x1000
    no_entry = SymbolTable([Symbol(BASE + 0x10000, "T", "_stext")])
    with pytest.raises(SymbolError, match="cannot tell where the Image is linked"):
        image_base(image, no_entry)
    with_text = SymbolTable([Symbol(BASE, "T", "_text")])
    assert image_base(image, with_text) == BASE


@pytest.mark.unit
def test_instruction_at() -> None:
    image = bytes(make_image())
    table = make_table(image_base=None)
    assert instruction_at(image, table, table.address("handle_exit")) == NOP
    assert instruction_at(image, table, table.address("handle_exit") + 4) == PACIASP
    with pytest.raises(SymbolError, match="not an aligned address inside the Image"):
        instruction_at(image, table, BASE + 0x40000)
    with pytest.raises(SymbolError, match="not an aligned address"):
        instruction_at(image, table, BASE + 0x20002)
    with pytest.raises(SymbolError, match="not an aligned address"):
        instruction_at(image, table, BASE - 4)


# ---------------------------------------------------------------------------- extraction errors


@pytest.mark.unit
def test_missing_vmlinux_to_elf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vmlinux_to_elf.core.kallsyms", None)
    with pytest.raises(EnvironmentProblem, match="vmlinux-to-elf"):
        symbols_from_image(bytes(make_image()))


@pytest.mark.unit
def test_extract_refuses_non_arm64(tmp_path: Path) -> None:
    import vmlinux_to_elf  # noqa: F401  (a declared dependency: fail, never skip)

    path = tmp_path / "junk"
    path.write_bytes(b"\x01" * 4096)
    with pytest.raises(KernelImageError, match="junk is not an arm64 Image"):
        extract_symbols(path)


@pytest.mark.unit
def test_extract_reports_missing_kallsyms(tmp_path: Path) -> None:
    import vmlinux_to_elf  # noqa: F401  (a declared dependency: fail, never skip)

    path = tmp_path / "Image"
    path.write_bytes(bytes(make_image()))
    with pytest.raises(KernelImageError, match=r"no kallsyms table found.*CONFIG_KALLSYMS=y"):
        extract_symbols(path)


@pytest.mark.unit
def test_extract_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(KernelImageError, match="cannot read kernel image"):
        extract_symbols(tmp_path / "missing")


# ---------------------------------------------------------------------------- real kernel


@pytest.fixture(scope="module")
def real_symbols() -> SymbolTable:
    import vmlinux_to_elf  # noqa: F401  (a declared dependency: fail, never skip)

    start = time.monotonic()
    table = extract_symbols(real_image_path())
    assert time.monotonic() - start < 120
    return table


@pytest.mark.integration
def test_real_image_symbols(real_symbols: SymbolTable) -> None:
    image = real_image_path().read_bytes()
    assert len(real_symbols) > 20_000
    assert real_symbols.image_base is not None
    for name in ("handle_exit", "kvm_vgic_flush_hwstate", "vgic_queue_irq_unlock"):
        insn = instruction_at(image, real_symbols, real_symbols.address(name))
        assert insn in (NOP, PACIASP, 0xD503245F), f"{name}: unexpected first insn {insn:#x}"
    assert SymbolTable.from_json(real_symbols.to_json()).address("handle_exit") == (
        real_symbols.address("handle_exit")
    )


# Addresses against the running kernel's /proc/kallsyms on whatever kernel is cached:
# tests/integration/test_kallsyms_live.py.

"""NEEDED resolution against tiny ELF files built here (no toolchain, no packages)."""

from __future__ import annotations

import posixpath
import struct

import pytest

from tracekit.errors import GuestBuildError
from tracekit.guest.elf import needed_closure, read_dynamic

pytestmark = pytest.mark.unit

AARCH64, X86_64 = 183, 62
BASE = 0x400000


def make_elf(
    needed: tuple[str, ...] = (),
    *,
    soname: str | None = None,
    interp: str | None = None,
    runpath: str | None = None,
    machine: int = AARCH64,
    big_endian: bool = False,
) -> bytes:
    """An ELF64 file with one PT_LOAD over everything, a PT_DYNAMIC and maybe a PT_INTERP."""
    end = ">" if big_endian else "<"
    strtab = bytearray(b"\0")

    def add(s: str) -> int:
        strtab.extend(s.encode() + b"\0")
        return len(strtab) - len(s) - 1

    dyn = [(1, add(n)) for n in needed]
    if soname:
        dyn.append((14, add(soname)))
    if runpath:
        dyn.append((29, add(runpath)))
    phnum = 3 if interp else 2
    interp_off = 64 + 56 * phnum
    interp_b = (interp.encode() + b"\0") if interp else b""
    strtab_off = interp_off + len(interp_b)
    dyn_off = strtab_off + len(strtab)
    dyn += [(5, BASE + strtab_off), (10, len(strtab)), (0, 0)]
    dynamic = b"".join(struct.pack(end + "qQ", t, v) for t, v in dyn)
    total = dyn_off + len(dynamic)
    ident = b"\x7fELF" + bytes([2, 2 if big_endian else 1, 1]) + b"\0" * 9
    header = ident + struct.pack(
        end + "HHIQQQIHHHHHH", 3, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0
    )
    phdrs = struct.pack(end + "IIQQQQQQ", 1, 5, 0, BASE, BASE, total, total, 0x1000)
    phdrs += struct.pack(end + "IIQQQQQQ", 2, 6, dyn_off, BASE + dyn_off, 0, len(dynamic), 0, 8)
    if interp:
        phdrs += struct.pack(end + "IIQQQQQQ", 3, 4, interp_off, 0, 0, len(interp_b), 0, 1)
    return header + phdrs + interp_b + bytes(strtab) + dynamic


class Tree:
    """A FileView over a dict, with symlinks as ("->", target) values."""

    def __init__(self, files: dict[str, bytes | tuple[str, str]], owners: dict[str, str]) -> None:
        self.files = files
        self.owners = owners

    def read(self, path: str) -> bytes | None:
        for _ in range(8):
            value = self.files.get(path)
            if not isinstance(value, tuple):
                return value
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), value[1]))
        return None

    def owner(self, path: str) -> str:
        return next((o for p, o in self.owners.items() if path.startswith(p)), "?")


def test_read_dynamic_fields() -> None:
    info = read_dynamic(
        make_elf(("libc.so.6", "libz.so.1"), interp="/lib/ld-linux-aarch64.so.1", runpath="/opt")
    )
    assert info.machine == AARCH64
    assert info.interpreter == "/lib/ld-linux-aarch64.so.1"
    assert info.needed == ("libc.so.6", "libz.so.1")
    assert info.runpath == ("/opt",)
    assert info.soname is None
    assert read_dynamic(make_elf(soname="libz.so.1", big_endian=True)).soname == "libz.so.1"


def test_not_elf_is_a_build_error() -> None:
    with pytest.raises(GuestBuildError, match="no ELF magic"):
        read_dynamic(b"#!/bin/sh\n" * 10, "init")
    with pytest.raises(GuestBuildError, match="ELF64"):
        read_dynamic(b"\x7fELF\x01" + b"\0" * 80, "old")


def test_closure_breadth_first_via_symlinks_runpath_and_missing() -> None:
    lib = "/lib/aarch64-linux-gnu"
    files: dict[str, bytes | tuple[str, str]] = {
        "/usr/bin/app": make_elf(
            ("libglib.so.0", "libc.so.6", "libpriv.so"), runpath="$ORIGIN/../lib/app"
        ),
        f"{lib}/libglib.so.0": ("->", "libglib.so.0.7400.6"),
        f"{lib}/libglib.so.0.7400.6": make_elf(
            ("libpcre.so.3", "libc.so.6"), soname="libglib.so.0"
        ),
        "/usr/lib/aarch64-linux-gnu/libc.so.6": make_elf(soname="libc.so.6"),
        # an x86_64 library of that name earlier in the path (DT_RUNPATH) is skipped
        "/usr/bin/../lib/app/libpriv.so": make_elf(("libgone.so.1",), machine=X86_64),
        f"{lib}/libpriv.so": make_elf(("libgone.so.1",)),
    }
    owners = {f"{lib}/libglib": "libglib2.0-0", "/usr/lib/aarch64-linux-gnu": "libc6"}
    resolved, missing = needed_closure(["/usr/bin/app"], Tree(files, owners))
    assert [(r.soname, r.path, r.needed_by, r.owner) for r in resolved] == [
        ("libglib.so.0", f"{lib}/libglib.so.0", "/usr/bin/app", "libglib2.0-0"),
        ("libc.so.6", "/usr/lib/aarch64-linux-gnu/libc.so.6", "/usr/bin/app", "libc6"),
        ("libpriv.so", f"{lib}/libpriv.so", "/usr/bin/app", "?"),
    ]
    assert missing == (
        ("libpcre.so.3", f"{lib}/libglib.so.0"),
        ("libgone.so.1", f"{lib}/libpriv.so"),
    )


def test_missing_root_is_an_error() -> None:
    with pytest.raises(GuestBuildError, match="not in the unpacked"):
        needed_closure(["/usr/bin/none"], Tree({}, {}))


def test_read_section_of_a_module_and_modinfo() -> None:
    from tracekit.guest.elf import read_section
    from tracekit.guest.kmodules import deps_from_modinfo, load_order, modinfo

    modinfo_bytes = b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0"
    names = b"\0.shstrtab\0.modinfo\0"
    body = names + modinfo_bytes
    shoff = 64 + len(body)
    header = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 1, AARCH64, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    )
    null = b"\0" * 64
    shstr = struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, 64, len(names), 0, 0, 1, 0)
    info = struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, 64 + len(names), len(modinfo_bytes), 0, 0, 1, 0)
    ko = header + body + null + shstr + info
    section = read_section(ko, ".modinfo")
    assert section == modinfo_bytes
    assert read_section(ko, ".text") is None
    infos = {
        "kernel/drivers/block/virtio_blk.ko": modinfo(section or b""),
        "kernel/drivers/virtio/virtio.ko": modinfo(b"depends=virtio_ring\0"),
        "kernel/drivers/virtio/virtio_ring.ko": modinfo(b"depends=\0"),
    }
    assert load_order(["virtio_blk"], deps_from_modinfo(infos)) == (
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/block/virtio_blk.ko",
    )

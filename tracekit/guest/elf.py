"""The dynamic-linking facts of an ELF file, and the closure of its ``NEEDED`` libraries (pure).

Only what a loader needs to find a program's libraries is read: the program interpreter
(``PT_INTERP``) and, from the dynamic section (``PT_DYNAMIC``), ``DT_NEEDED``,
``DT_SONAME``, ``DT_RUNPATH`` / ``DT_RPATH``. Layouts: the System V gABI, "ELF Header",
"Program Header" and "Dynamic Section" (``include/uapi/linux/elf.h`` has the same
structs); ``DT_STRTAB`` is a virtual address, turned into a file offset through the
``PT_LOAD`` segment that covers it, as ``ld.so`` does (``elf/dl-load.c``). ELF64 only,
either byte order: every binary L1's initramfs carries is aarch64.

:func:`needed_closure` walks the ``NEEDED`` entries breadth-first through a
:class:`FileView` (the unpacked packages, a fixture), the way glibc's loader searches:
``DT_RPATH`` (when there is no ``DT_RUNPATH``), ``DT_RUNPATH``, then the default
directories (``elf/dl-load.c`` ``_dl_map_object``; Debian's multiarch trusted directories
``/lib/aarch64-linux-gnu`` and ``/usr/lib/aarch64-linux-gnu`` come first). No
``ld.so.cache`` exists in the initramfs, so the defaults are all the loader has.
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tracekit.errors import GuestBuildError

__all__ = [
    "DEFAULT_LIBRARY_DIRS",
    "DynamicInfo",
    "FileView",
    "ResolvedLibrary",
    "needed_closure",
    "read_dynamic",
    "read_section",
]

_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB, _ELFDATA2MSB = 1, 2
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ = 0, 1, 5, 10
_DT_SONAME, _DT_RPATH, _DT_RUNPATH = 14, 15, 29

#: glibc's default search path on Debian arm64 (multiarch first), without an ld.so.cache.
DEFAULT_LIBRARY_DIRS = (
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib",
    "/usr/lib",
)


@dataclass(frozen=True)
class DynamicInfo:
    """What the loader reads from one ELF file to map its dependencies."""

    machine: int
    interpreter: str | None
    needed: tuple[str, ...]
    soname: str | None
    runpath: tuple[str, ...]
    rpath: tuple[str, ...]


def _fail(what: str, source: str) -> GuestBuildError:
    return GuestBuildError(
        f"{source} is not a usable ELF64 file: {what}",
        hint="the package's binary may be damaged; `tracekit guest build --linux-l2 --force`",
    )


def read_dynamic(data: bytes, source: str = "the file") -> DynamicInfo:
    """Parse ``data`` (a whole ELF64 file); a static binary has no interpreter or NEEDED."""
    if len(data) < 64 or data[:4] != _MAGIC:
        raise _fail("no ELF magic", source)
    if data[4] != _ELFCLASS64:
        raise _fail(f"class {data[4]} (only ELF64 is read)", source)
    if data[5] not in (_ELFDATA2LSB, _ELFDATA2MSB):
        raise _fail(f"byte order {data[5]}", source)
    end = "<" if data[5] == _ELFDATA2LSB else ">"
    (machine,) = struct.unpack_from(end + "H", data, 0x12)
    (phoff,) = struct.unpack_from(end + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    if phentsize < 56 or phoff + phnum * phentsize > len(data):
        raise _fail("program headers out of range", source)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interpreter: str | None = None
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
            end + "IIQQQQ", data, phoff + i * phentsize
        )
        if off + filesz > len(data):
            raise _fail(f"segment {i} beyond the end of the file", source)
        if p_type == _PT_LOAD:
            loads.append((vaddr, off, filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (off, filesz)
        elif p_type == _PT_INTERP:
            interpreter = data[off : off + filesz].split(b"\0", 1)[0].decode()
    if dynamic is None:
        return DynamicInfo(machine, interpreter, (), None, (), ())
    entries: list[tuple[int, int]] = []
    off, size = dynamic
    for pos in range(off, off + size - 15, 16):
        tag, val = struct.unpack_from(end + "qQ", data, pos)
        if tag == _DT_NULL:
            break
        entries.append((tag, val))
    strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
    strsz = next((v for t, v in entries if t == _DT_STRSZ), None)
    if strtab_vaddr is None or strsz is None:
        raise _fail("a dynamic section without DT_STRTAB/DT_STRSZ", source)
    strtab = next((o + strtab_vaddr - v for v, o, n in loads if v <= strtab_vaddr < v + n), None)
    if strtab is None or strtab + strsz > len(data):
        raise _fail("DT_STRTAB is in no loaded segment", source)
    table = data[strtab : strtab + strsz]

    def string(index: int) -> str:
        if index >= len(table):
            raise _fail(f"string index {index} past DT_STRSZ", source)
        return table[index:].split(b"\0", 1)[0].decode()

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for t, v in entries if t == tag for p in string(v).split(":") if p)

    soname = next((string(v) for t, v in entries if t == _DT_SONAME), None)
    needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
    return DynamicInfo(machine, interpreter, needed, soname, paths(_DT_RUNPATH), paths(_DT_RPATH))


def read_section(data: bytes, name: str, source: str = "the file") -> bytes | None:
    """The contents of the section called ``name`` (e.g. a module's ``.modinfo``), or None.

    Section headers (gABI "Sections"): ``e_shoff`` at 0x28, ``e_shentsize``, ``e_shnum``,
    ``e_shstrndx`` at 0x3a; each header is sh_name, sh_type (u32), sh_flags, sh_addr,
    sh_offset, sh_size (u64), ... A relocatable file (a ``.ko``) has sections, no segments.
    """
    if len(data) < 64 or data[:4] != _MAGIC or data[4] != _ELFCLASS64:
        raise _fail("no ELF64 header", source)
    end = "<" if data[5] == _ELFDATA2LSB else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    if shentsize < 64 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        raise _fail("section headers out of range", source)

    def header(i: int) -> tuple[int, int, int]:
        sh_name, _type, _flags, _addr, off, size = struct.unpack_from(
            end + "IIQQQQ", data, shoff + i * shentsize
        )
        return sh_name, off, size

    _, names_off, names_size = header(shstrndx)
    names = data[names_off : names_off + names_size]
    for i in range(shnum):
        sh_name, off, size = header(i)
        if names[sh_name:].split(b"\0", 1)[0] == name.encode():
            if off + size > len(data):
                raise _fail(f"section {name} beyond the end of the file", source)
            return data[off : off + size]
    return None


class FileView(Protocol):
    """A read-only file tree (unpacked packages): symlinks followed, None if absent."""

    def read(self, path: str) -> bytes | None: ...

    def owner(self, path: str) -> str:
        """Which package (or tree) ``path`` came from, for messages and the manifest."""
        ...


@dataclass(frozen=True)
class ResolvedLibrary:
    """One library of the closure: its name, where the loader finds it, who needed it."""

    soname: str
    path: str
    needed_by: str
    owner: str


def _search_dirs(info: DynamicInfo, origin: str) -> tuple[str, ...]:
    # ld.so: DT_RPATH only when there is no DT_RUNPATH; $ORIGIN is the object's directory.
    dirs = (() if info.runpath else info.rpath) + info.runpath + DEFAULT_LIBRARY_DIRS
    return tuple(d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in dirs)


def needed_closure(
    roots: Sequence[str], view: FileView
) -> tuple[tuple[ResolvedLibrary, ...], tuple[tuple[str, str], ...]]:
    """Every library ``roots`` (absolute paths in ``view``) load, breadth-first, each once.

    Returns (resolved, missing): ``missing`` holds (soname, needed_by) of every NEEDED
    entry no search directory has, so a caller can fetch more packages and call again.
    Libraries are identified by soname, as the loader does (a second NEEDED of the same
    soname is satisfied by the first).
    """
    resolved: dict[str, ResolvedLibrary] = {}
    missing: dict[str, str] = {}
    queue: list[tuple[str, bytes]] = []
    for root in roots:
        data = view.read(root)
        if data is None:
            raise GuestBuildError(f"{root} is not in the unpacked packages")
        queue.append((root, data))
    while queue:
        path, data = queue.pop(0)
        info = read_dynamic(data, path)
        for soname in info.needed:
            if soname in resolved or soname in missing:
                continue
            for d in _search_dirs(info, posixpath.dirname(path)):
                candidate = posixpath.join(d, soname)
                lib = view.read(candidate)
                if lib is not None and read_dynamic(lib, candidate).machine == info.machine:
                    resolved[soname] = ResolvedLibrary(
                        soname, candidate, path, view.owner(candidate)
                    )
                    queue.append((candidate, lib))
                    break
            else:
                missing[soname] = path
    return tuple(resolved.values()), tuple(missing.items())

"""A deterministic ``newc`` cpio writer for L1's initramfs (pure; no cpio binary needed).

Format: ``include/linux/initramfs_fs.h`` / ``usr/gen_init_cpio.c`` in the kernel tree: a
110-byte ASCII header ``070701`` + 13 eight-digit hex fields, the NUL-terminated name,
padding to 4 bytes, the data, padding to 4 bytes; the archive ends with ``TRAILER!!!``.
Fixed inode numbers, owners and mtimes make the same inputs give the same bytes.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CpioEntry", "build_newc", "directory", "file", "gzip_deterministic", "symlink"]


@dataclass(frozen=True)
class CpioEntry:
    """One member of the archive: a path (no leading slash), its mode and contents."""

    path: str
    mode: int
    data: bytes = b""


def directory(path: str, perm: int = 0o755) -> CpioEntry:
    return CpioEntry(path, stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> CpioEntry:
    return CpioEntry(path, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, nlink: int, size: int, namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def build_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialize ``entries`` (parents before children) into one newc archive."""
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        name = entry.path.lstrip("/").encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        hdr = _header(ino, entry.mode, nlink, len(entry.data), len(name))
        out += hdr + name + _pad4(len(hdr) + len(name))
        out += entry.data + _pad4(len(entry.data))
    trailer = b"TRAILER!!!\0"
    hdr = _header(0, 0, 1, 0, len(trailer))
    out += hdr + trailer + _pad4(len(hdr) + len(trailer))
    return bytes(out)


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with mtime 0 so identical archives compress to identical bytes."""
    return gzip.compress(data, compresslevel=6, mtime=0)

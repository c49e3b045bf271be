"""The arm64 kernel ``Image`` header (``Documentation/arch/arm64/booting.rst``), parsed from
bytes already in memory (pure): the magic that tells an arm64 Image, its size and flags,
and where the header's initial branch enters the kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tracekit.errors import KernelImageError

__all__ = ["ARM64_IMAGE_MAGIC", "ImageHeader", "read_image_header"]

ARM64_IMAGE_MAGIC = b"ARM\x64"
_HEADER = struct.Struct("<IIQQQQQQ4sI")  # Documentation/arch/arm64/booting.rst


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """The 64-byte arm64 ``Image`` header (``Documentation/arch/arm64/booting.rst``).

    :param text_offset: where the Image must sit above a 2 MiB aligned base (0 since 5.x).
    :param image_size: effective Image size in bytes, including BSS.
    :param flags: bit 0 big-endian, bits 1-2 page size, bit 3 physical placement.
    :param entry_offset: file offset the header's initial branch jumps to (``primary_entry``),
        or None when neither ``code0`` nor ``code1`` is an unconditional branch.
    """

    code0: int
    code1: int
    text_offset: int
    image_size: int
    flags: int
    pe_offset: int
    entry_offset: int | None

    @property
    def big_endian(self) -> bool:
        """True for a big-endian kernel (flags bit 0)."""
        return bool(self.flags & 1)

    @property
    def page_size(self) -> int | None:
        """Kernel page size in bytes from flags bits 1-2, None when unspecified."""
        return {1: 4096, 2: 16384, 3: 65536}.get((self.flags >> 1) & 3)

    @property
    def has_pe_header(self) -> bool:
        """True when the Image is also a PE/COFF (EFI stub) file: starts with ``MZ``."""
        return self.code0 & 0xFFFF == 0x5A4D


def _branch_target(insn: int, at: int) -> int | None:
    """Target of an A64 unconditional ``B`` at file offset ``at``, else None."""
    if insn & 0xFC000000 != 0x14000000:
        return None
    imm = insn & 0x03FFFFFF
    if imm & 0x02000000:
        imm -= 1 << 26
    return at + imm * 4


def read_image_header(data: bytes, *, source: str = "the file") -> ImageHeader:
    """Parse the arm64 Image header at the start of ``data``.

    :param source: how to name the data in the error message (e.g. its path).

    :raises KernelImageError: ``data`` is shorter than 64 bytes or has no ``ARM\\x64`` magic.
    """
    if len(data) < _HEADER.size or data[0x38:0x3C] != ARM64_IMAGE_MAGIC:
        raise KernelImageError(
            f"{source} is not an arm64 Image (no ARM\\x64 magic at 0x38)",
            hint="pass an uncompressed arm64 kernel Image (vmlinuz decompressed if needed)",
        )
    code0, code1, text_offset, image_size, flags, _r2, _r3, _r4, _magic, pe = _HEADER.unpack_from(
        data, 0
    )
    entry = _branch_target(code0, 0)
    if entry is None:
        entry = _branch_target(code1, 4)
    return ImageHeader(
        code0=code0,
        code1=code1,
        text_offset=text_offset,
        image_size=image_size,
        flags=flags,
        pe_offset=pe,
        entry_offset=entry,
    )

"""The raw BPF Type Format (BTF): the blob's header, its type records, and finding it in an
arm64 kernel Image. The queries the probes make (member paths) are in :mod:`btf`.

Only what member offsets need is decoded: structs and unions (members), arrays, pointers,
and the typedef/qualifier chains between them. Every other kind is skipped by its length.

Format: ``Documentation/bpf/btf.rst`` and ``include/uapi/linux/btf.h`` in the Linux tree
(cited below as btf.rst and btf.h).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self, TypeVar

from tracekit.errors import KernelImageError, SymbolError

__all__ = ["BtfTypes", "Member", "find_btf_blob", "locate"]

# btf.h ``struct btf_header``: magic 0xEB9F (u16), version 1 (u8), flags (u8), then
# hdr_len, type_off, type_len, str_off, str_len (u32); both offsets count from the end of
# the header. Only little-endian blobs are read: the kernel writes BTF in its own byte
# order, and tracekit reads only little-endian arm64 kernels (Debian's), as its probes do.
_HEADER = struct.Struct("<HBBIIIII")
_MAGIC = 0xEB9F
_VERSION = 1
_HDR_LEN = _HEADER.size  # 24, the only header version 1 has
_U32 = struct.Struct("<I")

# btf.h BTF_KIND_* values.
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19

# btf.rst 2.2: each type is a 12-byte ``struct btf_type`` (name_off, info, size/type) and
# then kind-specific data. The section has no index: type N starts after types 1..N-1, so
# every kind's length must be known, even of kinds never looked at. Fixed bytes: a u32 for
# INT, btf.h ``struct btf_array``, ``btf_var``, ``btf_decl_tag``; bytes per ``vlen`` item:
# ``btf_member``, ``btf_enum``, ``btf_param``, ``btf_var_secinfo``, ``btf_enum64``.
_FIXED = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}
_PER_ITEM = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}
# btf.rst 2.1: the third word is ``size`` for these kinds and a type id for the others.
_SIZED = frozenset({_INT, _STRUCT, _UNION, _ENUM, _DATASEC, _FLOAT, _ENUM64})
# Kinds that only rename or qualify another type; a member's layout is that type's.
_ALIASES = frozenset({_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG})
COMPOSITE = (_STRUCT, _UNION)
# arm64 is LP64 (tracekit reads no other architecture); BTF gives no size for a PTR.
_POINTER_SIZE = 8
# Deeper chains only come from a corrupt blob (a cycle); stop rather than recurse forever.
MAX_DEPTH = 64

#: Struct/union name -> their ids; names that are only forward-declared.
_Names = tuple[dict[str, list[int]], set[str]]


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a STRUCT/UNION; ``bitfield_size`` is 0 unless it is a bitfield."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


def _bad(what: str) -> KernelImageError:
    return KernelImageError(
        f"malformed BTF: {what}",
        hint="extract the BTF again from a complete kernel image built with "
        "CONFIG_DEBUG_INFO_BTF=y",
    )


class BtfTypes:
    """A parsed BTF blob: one pass indexes where each type starts; a type's members are
    decoded when first asked for."""

    def __init__(
        self, types: bytes, strings: bytes, offsets: list[int], kinds: bytes, names: _Names
    ) -> None:
        """Use :meth:`parse`."""
        self._types = types
        self._strings = strings
        self._offsets = offsets  # type id -> where it starts in ``types`` (id 0 is void)
        self._kinds = kinds
        self.structs, self.fwds = names
        self._members: dict[int, list[Member]] = {}

    @classmethod
    def parse(cls, blob: bytes) -> Self:
        """Parse a complete BTF blob (header, type section, string section).

        :raises KernelImageError: bad magic, unsupported version, truncated or inconsistent
            sections, unknown type kinds.
        """
        if len(blob) < _HDR_LEN:
            raise _bad(f"blob is {len(blob)} bytes, shorter than the {_HDR_LEN}-byte header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
            blob
        )
        if magic != _MAGIC:
            order = " (a big-endian kernel's)" if magic == 0x9FEB else ""
            raise _bad(f"expected magic 0x{_MAGIC:04x} at offset 0, found 0x{magic:04x}{order}")
        if version != _VERSION:
            raise _bad(f"expected version {_VERSION}, found {version}")
        if hdr_len < _HDR_LEN or hdr_len > len(blob):
            raise _bad(f"header length {hdr_len} is invalid for a {len(blob)}-byte blob")
        if type_off % 4 or type_len % 4:  # btf.rst 2.1: types are 4-byte aligned
            raise _bad(f"type section offset/length {type_off}/{type_len} not 4-byte aligned")
        types_at, strs_at = hdr_len + type_off, hdr_len + str_off
        need = max(types_at + type_len, strs_at + str_len)
        if need > len(blob):
            raise _bad(f"truncated: header needs {need} bytes but blob has {len(blob)}")
        types = bytes(blob[types_at : types_at + type_len])
        strings = bytes(blob[strs_at : strs_at + str_len])
        # btf.rst 2.1: the string section starts with the empty name and every name ends in NUL.
        if not strings or strings[0] != 0 or strings[-1] != 0:
            raise _bad("string section must start and end with a NUL byte")
        return cls(types, strings, *_index(types, strings))

    def __len__(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._offsets) - 1

    def word(self, type_id: int, index: int) -> int:
        """Word ``index`` of a type: 0 name_off, 1 info, 2 size/type, 3.. its tail."""
        if not 0 < type_id < len(self._offsets):
            raise _bad(f"type id {type_id} outside 1..{len(self._offsets) - 1}")
        return int(_U32.unpack_from(self._types, self._offsets[type_id] + 4 * index)[0])

    def _str(self, off: int) -> str:
        if off >= len(self._strings):
            raise _bad(f"name offset {off} outside the {len(self._strings)}-byte string section")
        return self._strings[off : self._strings.index(b"\0", off)].decode("utf-8", "replace")

    def name(self, type_id: int) -> str:
        return self._str(self.word(type_id, 0))

    def kind(self, type_id: int) -> int:
        return self._kinds[type_id] if 0 < type_id < len(self._kinds) else 0

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the type that gives the layout."""
        for _ in range(MAX_DEPTH):
            if self.kind(type_id) not in _ALIASES:
                return type_id
            type_id = self.word(type_id, 2)
        raise _bad(f"type chain at id {type_id} is longer than {MAX_DEPTH}")

    def array(self, type_id: int) -> tuple[int, int] | None:
        """(element type, element count) of an ARRAY (btf.h ``struct btf_array``)."""
        if self.kind(type_id) != _ARRAY:
            return None
        return self.word(type_id, 3), self.word(type_id, 5)

    def size(self, type_id: int, depth: int = 0) -> int:
        """Size in bytes: typedefs followed, arrays multiplied out (btf.rst 2.2.3: an
        ARRAY has no size of its own), a pointer 8.

        :raises SymbolError: the type has no size (void, a function, a declaration only).
        """
        type_id = self.resolve(type_id)
        kind = self.kind(type_id)
        array = self.array(type_id)
        if array is not None:
            if depth > MAX_DEPTH:
                raise _bad(f"array of arrays at id {type_id} nests deeper than {MAX_DEPTH}")
            return array[1] * self.size(array[0], depth + 1)
        if kind == _PTR:
            return _POINTER_SIZE
        if kind in _SIZED:
            return self.word(type_id, 2)
        raise SymbolError(
            f"type {self.spell(type_id)!r} has no size",
            hint="ask for a struct, union, scalar, pointer or array",
        )

    def spell(self, type_id: int, depth: int = 0) -> str:
        """A C-like spelling of a type, for error messages."""
        kind = self.kind(type_id)
        if type_id == 0 or depth > MAX_DEPTH:
            return "void" if type_id == 0 else "?"
        if kind in _ALIASES - {_TYPEDEF}:
            return self.spell(self.word(type_id, 2), depth + 1)
        if kind == _PTR:
            return self.spell(self.word(type_id, 2), depth + 1) + " *"
        array = self.array(type_id)
        if array is not None:
            return f"{self.spell(array[0], depth + 1)}[{array[1]}]"
        name = self.name(type_id) or "(anon)"
        prefix = {_STRUCT: "struct ", _UNION: "union ", _ENUM: "enum ", _ENUM64: "enum "}
        return prefix.get(kind, "") + name

    def members(self, type_id: int) -> list[Member]:
        """Members of a STRUCT/UNION (btf.h ``struct btf_member``: name_off, type, offset).

        btf.rst 2.2.4: with the kind_flag set, ``offset`` holds the bitfield size in its top
        8 bits and the bit offset in the low 24; without it, it is the bit offset.
        """
        cached = self._members.get(type_id)
        if cached is not None:
            return cached
        info = self.word(type_id, 1)
        kind_flag = bool(info >> 31)
        members = []
        for i in range(info & 0xFFFF):
            name_off, member_type, offset = (self.word(type_id, 3 + 3 * i + j) for j in range(3))
            name = self._str(name_off)
            bits, bit_offset = (offset >> 24, offset & 0xFFFFFF) if kind_flag else (0, offset)
            members.append(Member(name, member_type, bit_offset, bits))
        self._members[type_id] = members
        return members


def _index(types: bytes, strings: bytes) -> tuple[list[int], bytes, _Names]:
    """Walk the type section once: where each type starts, its kind (btf.rst 2.2: ``info``
    bits 0-15 are vlen, bits 24-28 the kind), and the ids of each struct/union name, with
    the names only declared (FWD). Type ids count from 1; 0 is void."""
    words = struct.Struct("<III").unpack_from
    offsets, kinds = [0], bytearray([0])
    structs: dict[str, list[int]] = {}
    fwds: set[str] = set()
    pos, end = 0, len(types)
    while pos < end:
        if pos + 12 > end:
            raise _bad(f"type record at offset {pos} runs past the type section ({end})")
        name_off, info, _ = words(types, pos)
        kind = (info >> 24) & 0x1F
        if not _INT <= kind <= _ENUM64:  # BTF_KIND_UNKN (0) is not a type either
            raise _bad(f"unknown type kind {kind} at type section offset {pos}")
        if name_off >= len(strings):
            raise _bad(f"name offset {name_off} outside the {len(strings)}-byte string section")
        if kind in (_STRUCT, _UNION, _FWD) and name_off:
            name = strings[name_off : strings.index(b"\0", name_off)].decode("utf-8", "replace")
            if kind == _FWD:
                fwds.add(name)
            else:
                structs.setdefault(name, []).append(len(offsets))
        offsets.append(pos)
        kinds.append(kind)
        pos += 12 + _FIXED.get(kind, 0) + _PER_ITEM.get(kind, 0) * (info & 0xFFFF)
    if pos != end:
        raise _bad(f"last type record runs past the type section ({pos} > {end})")
    return offsets, bytes(kinds), (structs, fwds)


T = TypeVar("T", bound="BtfTypes")


def find_btf_blob(image: bytes, *, source: str = "the kernel image") -> bytes:
    """Locate the ``.BTF`` blob in a raw kernel Image (or a bare blob) and return a copy.

    :param source: how to name the image in the error message (e.g. its path).
    :raises KernelImageError: no BTF in it.
    """
    return locate(image, source, BtfTypes)[0]


def locate(image: bytes, source: str, cls: type[T]) -> tuple[bytes, T]:
    """The BTF blob in ``image`` and its parse as a ``cls``.

    A raw arm64 ``Image`` has no ELF section headers to name ``.BTF``, so every place the
    header's first bytes (magic, version 1) occur with section sizes that fit the buffer is
    a candidate; the largest that parses completely wins (smaller ones are usually
    coincidences in code or data).
    """
    candidates: list[tuple[int, int]] = []
    start = 0
    while (at := image.find(b"\x9f\xeb\x01", start)) >= 0 and len(image) - at >= _HDR_LEN:
        start = at + 1
        _m, _v, _f, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(image, at)
        total = hdr_len + max(type_off + type_len, str_off + str_len)
        if hdr_len == _HDR_LEN and str_len and at + total <= len(image):
            candidates.append((total, at))
    for total, at in sorted(candidates, reverse=True):
        blob = image[at : at + total]
        try:
            return blob, cls.parse(blob)
        except KernelImageError:
            continue
    raise KernelImageError(
        f"no BTF found in {source}",
        hint="the kernel needs CONFIG_DEBUG_INFO_BTF=y (and to be little-endian)",
    )

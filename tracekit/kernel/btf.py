"""Struct member offsets from the BPF Type Format (BTF) embedded in an arm64 kernel Image.

Probe captures read kernel structs by member path (``kvm_vcpu.arch.fault.esr_el2``), and
those offsets move between kernel versions and configs. A kernel built with
``CONFIG_DEBUG_INFO_BTF=y`` carries every type it was compiled with in its ``.BTF``
section, so the offsets come from the kernel itself rather than a hand-kept table.

Only what that needs is decoded: structs and unions (members), arrays, pointers, and the
typedef/qualifier chains between them. Every other kind is skipped by its length alone.
``tests/integration/test_btf_bpftool.py`` checks the results against Debian's
``bpftool btf dump`` of the same blob.

Format: ``Documentation/bpf/btf.rst`` and ``include/uapi/linux/btf.h`` in the Linux tree
(cited below as btf.rst and btf.h).
"""

from __future__ import annotations

import difflib
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import KernelImageError, SymbolError

__all__ = ["Btf", "MemberInfo", "extract_layout", "find_btf_blob", "load_btf_from_file"]

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
_COMPOSITE = (_STRUCT, _UNION)
# arm64 is LP64 (tracekit reads no other architecture); BTF gives no size for a PTR.
_POINTER_SIZE = 8
# Deeper chains only come from a corrupt blob (a cycle); stop rather than recurse forever.
_MAX_DEPTH = 64

#: Struct/union name -> their ids; names that are only forward-declared.
_Names = tuple[dict[str, list[int]], set[str]]

_PATH_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")
_INDEX = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """Where a member reached by a path lives inside its outermost struct.

    :param offset: byte offset (for a bitfield, the byte holding its first bit).
    :param bit_offset: offset in bits from the start of the outermost struct.
    :param size: size in bytes; for a bitfield, the bytes from ``offset`` covering its bits.
    :param bitfield_size: width in bits of a bitfield, 0 otherwise.
    """

    offset: int
    bit_offset: int
    size: int
    bitfield_size: int


@dataclass(frozen=True, slots=True)
class _Member:
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


class Btf:
    """A parsed BTF blob: one pass indexes where each type starts; a type's members are
    decoded when a path first goes through it."""

    def __init__(
        self, types: bytes, strings: bytes, offsets: list[int], kinds: bytes, names: _Names
    ) -> None:
        """Use :meth:`parse`."""
        self._types = types
        self._strings = strings
        self._offsets = offsets  # type id -> where it starts in ``types`` (id 0 is void)
        self._kinds = kinds
        self._structs, self._fwds = names
        self._members: dict[int, list[_Member]] = {}

    @classmethod
    def parse(cls, blob: bytes) -> Btf:
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

    # ------------------------------------------------------------------ types

    def __len__(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._offsets) - 1

    def _word(self, type_id: int, index: int) -> int:
        """Word ``index`` of a type: 0 name_off, 1 info, 2 size/type, 3.. its tail."""
        if not 0 < type_id < len(self._offsets):
            raise _bad(f"type id {type_id} outside 1..{len(self._offsets) - 1}")
        return int(_U32.unpack_from(self._types, self._offsets[type_id] + 4 * index)[0])

    def _str(self, off: int) -> str:
        if off >= len(self._strings):
            raise _bad(f"name offset {off} outside the {len(self._strings)}-byte string section")
        return self._strings[off : self._strings.index(b"\0", off)].decode("utf-8", "replace")

    def _name(self, type_id: int) -> str:
        return self._str(self._word(type_id, 0))

    def _kind(self, type_id: int) -> int:
        return self._kinds[type_id] if 0 < type_id < len(self._kinds) else 0

    def _resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the type that gives the layout."""
        for _ in range(_MAX_DEPTH):
            if self._kind(type_id) not in _ALIASES:
                return type_id
            type_id = self._word(type_id, 2)
        raise _bad(f"type chain at id {type_id} is longer than {_MAX_DEPTH}")

    def _array(self, type_id: int) -> tuple[int, int] | None:
        """(element type, element count) of an ARRAY (btf.h ``struct btf_array``)."""
        if self._kind(type_id) != _ARRAY:
            return None
        return self._word(type_id, 3), self._word(type_id, 5)

    def _size(self, type_id: int, depth: int = 0) -> int:
        type_id = self._resolve(type_id)
        kind = self._kind(type_id)
        array = self._array(type_id)
        if array is not None and depth < _MAX_DEPTH:
            return array[1] * self._size(array[0], depth + 1)
        if kind == _PTR:
            return _POINTER_SIZE
        if kind in _SIZED:
            return self._word(type_id, 2)
        raise SymbolError(
            f"type {self._spell(type_id)!r} has no size",
            hint="ask for a struct, union, scalar, pointer or array",
        )

    def _spell(self, type_id: int, depth: int = 0) -> str:
        """A C-like spelling of a type, for error messages."""
        kind = self._kind(type_id)
        if type_id == 0 or depth > _MAX_DEPTH:
            return "void" if type_id == 0 else "?"
        if kind in _ALIASES - {_TYPEDEF}:
            return self._spell(self._word(type_id, 2), depth + 1)
        if kind == _PTR:
            return self._spell(self._word(type_id, 2), depth + 1) + " *"
        array = self._array(type_id)
        if array is not None:
            return f"{self._spell(array[0], depth + 1)}[{array[1]}]"
        name = self._name(type_id) or "(anon)"
        prefix = {_STRUCT: "struct ", _UNION: "union ", _ENUM: "enum ", _ENUM64: "enum "}
        return prefix.get(kind, "") + name

    def _members_of(self, type_id: int) -> list[_Member]:
        """Members of a STRUCT/UNION (btf.h ``struct btf_member``: name_off, type, offset).

        btf.rst 2.2.4: with the kind_flag set, ``offset`` holds the bitfield size in its top
        8 bits and the bit offset in the low 24; without it, it is the bit offset.
        """
        cached = self._members.get(type_id)
        if cached is not None:
            return cached
        info = self._word(type_id, 1)
        kind_flag = bool(info >> 31)
        members = []
        for i in range(info & 0xFFFF):
            name_off, member_type, offset = (self._word(type_id, 3 + 3 * i + j) for j in range(3))
            name = self._str(name_off)
            bits, bit_offset = (offset >> 24, offset & 0xFFFFFF) if kind_flag else (0, offset)
            members.append(_Member(name, member_type, bit_offset, bits))
        self._members[type_id] = members
        return members

    def _flat(self, type_id: int, base: int = 0, depth: int = 0) -> Iterator[tuple[_Member, int]]:
        """(member, bit offset) of a struct's named members, those of its anonymous struct
        and union members included (C reaches them by name through the outer struct)."""
        for m in self._members_of(type_id):
            if m.name:
                yield m, base + m.bit_offset
            elif depth < _MAX_DEPTH and self._kind(inner := self._resolve(m.type_id)) in _COMPOSITE:
                yield from self._flat(inner, base + m.bit_offset, depth + 1)

    def _find(self, type_id: int, name: str) -> tuple[_Member, int] | None:
        # A direct member first: C resolves a name in the outer struct before anonymous ones.
        for m in self._members_of(type_id):
            if m.name == name:
                return m, m.bit_offset
        return next(((m, bits) for m, bits in self._flat(type_id) if m.name == name), None)

    # ------------------------------------------------------------------ member paths

    def _walk(self, root: int, parts: list[str], path: str) -> MemberInfo:
        current, type_id, bits, walked = root, root, 0, self._name(root)
        member: _Member | None = None
        for part in parts:
            match = _PATH_PART.match(part)
            if match is None:
                raise SymbolError(
                    f"bad member path {path!r}: {part!r} is not an identifier",
                    hint="write it like 'kvm_vcpu.arch.fault.esr_el2' or 'vgic_cpu.lrs[2]'",
                )
            name = match.group(1)
            if self._kind(current) not in _COMPOSITE:
                raise SymbolError(
                    f"cannot take member {name!r} of {walked!r} in {path!r}: it is "
                    f"{self._spell(type_id)!r}, not a struct or union",
                    hint="offsets cannot cross pointers; start a new path at the pointed-to struct",
                )
            found = self._find(current, name)
            if found is None:
                names = [m.name for m, _bits in self._flat(current)]
                close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
                more = "" if close or len(names) <= 12 else ", ..."
                label = "close names" if close else "members"
                raise SymbolError(
                    f"{self._spell(current)} has no member {name!r} (path {path!r}; "
                    f"{label}: {', '.join(close or names[:12])}{more})",
                    hint="check the member path against this kernel's struct layout",
                )
            member, rel_bits = found
            bits += rel_bits
            type_id = member.type_id
            walked = f"{walked}.{name}"
            for index in map(int, _INDEX.findall(match.group(2))):
                array = self._array(self._resolve(type_id))
                if array is None:
                    raise SymbolError(
                        f"cannot index {walked!r} in {path!r}: it is "
                        f"{self._spell(type_id)!r}, not an array",
                        hint="remove the [index]",
                    )
                if index >= array[1]:
                    raise SymbolError(
                        f"index {index} out of range for {walked!r} ({array[1]} elements) "
                        f"in {path!r}",
                        hint=f"use an index below {array[1]}",
                    )
                type_id = array[0]
                bits += index * self._size(type_id) * 8
                walked = f"{walked}[{index}]"
                member = None  # an array element is never a bitfield
            current = self._resolve(type_id)
        if member is not None and member.bitfield_size:
            width = member.bitfield_size
            return MemberInfo(bits // 8, bits, (bits % 8 + width + 7) // 8, width)
        return MemberInfo(bits // 8, bits, self._size(type_id), 0)

    def member_info(self, path: str) -> MemberInfo:
        """Resolve ``"struct.member.submember"`` to its offset and size.

        The first component names a struct or union; each further one names a member
        (anonymous struct/union members are searched too) and may index an array with
        ``[i]``. A path with no member is the whole struct.

        :raises SymbolError: unknown struct or member, a struct whose definitions disagree,
            a path through a pointer, a bad array index.
        """
        head, *parts = path.strip().split(".")
        if not head or not all(parts):
            raise SymbolError(
                f"bad member path {path!r}: empty component",
                hint="write it like 'kvm_vcpu.arch.fault.esr_el2'",
            )
        roots = self._structs.get(head, [])
        if not roots:
            close = difflib.get_close_matches(head, list(self._structs), n=5, cutoff=0.7)
            if head in self._fwds:
                detail = "only a forward declaration of it is in the BTF"
            else:
                detail = ("close names: " + ", ".join(close)) if close else "no similar names"
            raise SymbolError(
                f"struct/union {head!r} not found in the kernel BTF ({detail})",
                hint="check the spelling or the kernel version/config",
            )
        # Deduplicated kernel BTF can still hold several structs of one name (e.g. file-local
        # structs in different files): the answer stands only if all that have the path agree.
        results: list[MemberInfo] = []
        errors: list[SymbolError] = []
        for root in roots:
            try:
                results.append(self._walk(root, parts, path))
            except SymbolError as exc:
                errors.append(exc)
        if not results:
            raise errors[0]
        if len(set(results)) > 1:
            offsets = sorted({hex(r.offset) for r in results})
            raise SymbolError(
                f"member path {path!r} is ambiguous: {len(roots)} BTF definitions of "
                f"{head!r} give offsets {offsets}",
                hint="this kernel has several incompatible definitions; report it",
            )
        return results[0]

    def member_offset(self, path: str) -> int:
        """Byte offset of a member (for a bitfield, the byte holding its first bit)."""
        return self.member_info(path).offset


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


def find_btf_blob(image: bytes, *, source: str = "the kernel image") -> bytes:
    """Locate the ``.BTF`` blob in a raw kernel Image (or a bare blob) and return a copy.

    :param source: how to name the image in the error message (e.g. its path).
    :raises KernelImageError: no BTF in it.
    """
    return _locate(image, source)[0]


def _locate(image: bytes, source: str) -> tuple[bytes, Btf]:
    """The BTF blob in ``image`` and its parse.

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
            return blob, Btf.parse(blob)
        except KernelImageError:
            continue
    raise KernelImageError(
        f"no BTF found in {source}",
        hint="the kernel needs CONFIG_DEBUG_INFO_BTF=y (and to be little-endian)",
    )


def load_btf_from_file(path: Path) -> Btf:
    """Read a kernel Image (or a bare BTF blob) and parse the BTF in it.

    :raises KernelImageError: unreadable file or no BTF in it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KernelImageError(
            f"cannot read {path}: {exc.strerror}", hint="check the path and permissions"
        ) from exc
    return _locate(data, str(path))[1]


def extract_layout(btf: Btf, paths: Iterable[str]) -> dict[str, dict[str, int]]:
    """Resolve member paths into the JSON ``{path: {"offset", "size"}}`` that ``guest
    build`` caches (``layout.json``), so recording and ``probes check`` need not parse BTF.

    Bitfields also carry ``"bit_offset"`` (from the start of the outermost struct) and
    ``"bit_size"``, so a byte-wide read of one is visibly not the whole story.

    :raises SymbolError: the first path that cannot be resolved.
    """
    layout: dict[str, dict[str, int]] = {}
    for path in paths:
        info = btf.member_info(path)
        entry = {"offset": info.offset, "size": info.size}
        if info.bitfield_size:
            entry |= {"bit_offset": info.bit_offset, "bit_size": info.bitfield_size}
        layout[path] = entry
    return layout

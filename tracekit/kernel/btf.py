"""Reader for the BPF Type Format (BTF) embedded in a Linux kernel image.

A kernel built with ``CONFIG_DEBUG_INFO_BTF=y`` carries a ``.BTF`` section describing every
type it was compiled with. A raw arm64 ``Image`` has no ELF section headers, so
:func:`find_btf_blob` locates the blob by scanning for the BTF header (magic ``0xEB9F``,
version 1, ``hdr_len`` 24) and validating it by parsing it completely.

:class:`Btf` answers the questions the probes need: the byte offset and size of a struct
member reached through a dotted path (``"kvm_vcpu.arch.fault.esr_el2"``, anonymous
struct/union members are searched transparently, ``name[3]`` indexes arrays), the size of a
struct, and the parameters of a function. :func:`extract_layout` turns a list of such paths
into a small JSON-serializable dict so the build step can cache only what the probes use.

Format reference: ``Documentation/bpf/btf.rst`` in the Linux tree. Only parsing happens
here; the only I/O is the thin :func:`load_btf_from_file` helper.
"""

from __future__ import annotations

import difflib
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from tracekit.errors import KernelImageError, SymbolError

__all__ = [
    "BTF_MAGIC",
    "Btf",
    "BtfArray",
    "BtfEnumerator",
    "BtfKind",
    "BtfMember",
    "BtfParam",
    "BtfSecInfo",
    "BtfType",
    "MemberInfo",
    "extract_layout",
    "find_btf_blob",
    "load_btf_from_file",
]

BTF_MAGIC = 0xEB9F
_BTF_VERSION = 1
_HDR_LEN = 24
_HDR = struct.Struct("<HBBIIIII")
_MAX_TYPE_DEPTH = 64

# Typedef-like kinds are skipped when resolving a type to its concrete definition.
_MODIFIER_KINDS: frozenset[int] = frozenset({8, 9, 10, 11, 18})


class BtfKind(IntEnum):
    """BTF type kinds (``BTF_KIND_*``)."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes of kind-specific data following the 12-byte ``struct btf_type``: (fixed, per vlen item).
_EXTRA: dict[int, tuple[int, int]] = {
    BtfKind.INT: (4, 0),
    BtfKind.PTR: (0, 0),
    BtfKind.ARRAY: (12, 0),
    BtfKind.STRUCT: (0, 12),
    BtfKind.UNION: (0, 12),
    BtfKind.ENUM: (0, 8),
    BtfKind.FWD: (0, 0),
    BtfKind.TYPEDEF: (0, 0),
    BtfKind.VOLATILE: (0, 0),
    BtfKind.CONST: (0, 0),
    BtfKind.RESTRICT: (0, 0),
    BtfKind.FUNC: (0, 0),
    BtfKind.FUNC_PROTO: (0, 8),
    BtfKind.VAR: (4, 0),
    BtfKind.DATASEC: (0, 12),
    BtfKind.FLOAT: (0, 0),
    BtfKind.DECL_TAG: (4, 0),
    BtfKind.TYPE_TAG: (0, 0),
    BtfKind.ENUM64: (0, 12),
}

# Kinds whose third word is a size; for the others it is a type id.
_SIZED_KINDS: frozenset[int] = frozenset(
    {
        BtfKind.INT,
        BtfKind.STRUCT,
        BtfKind.UNION,
        BtfKind.ENUM,
        BtfKind.DATASEC,
        BtfKind.FLOAT,
        BtfKind.ENUM64,
    }
)

_PATH_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")
_INDEX = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class BtfMember:
    """One member of a struct or union.

    :param bit_offset: offset of the member from the start of its struct, in bits.
    :param bitfield_size: width in bits for a bitfield, 0 for an ordinary member.
    """

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True, slots=True)
class BtfParam:
    """One parameter of a FUNC_PROTO (``name`` is empty in prototypes without names)."""

    name: str
    type_id: int


@dataclass(frozen=True, slots=True)
class BtfEnumerator:
    """One ``NAME = value`` of an ENUM or ENUM64."""

    name: str
    value: int


@dataclass(frozen=True, slots=True)
class BtfArray:
    """The element type, index type and element count of an ARRAY."""

    elem_type: int
    index_type: int
    nelems: int


@dataclass(frozen=True, slots=True)
class BtfSecInfo:
    """One variable placed in a DATASEC."""

    type_id: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class BtfType:
    """One decoded BTF type.

    ``size`` is set for INT, STRUCT, UNION, ENUM, ENUM64, FLOAT and DATASEC; ``ref`` (the
    referenced type id) for PTR, TYPEDEF, modifiers, FUNC, FUNC_PROTO (return type), VAR,
    DECL_TAG and TYPE_TAG. ``vlen`` is the linkage for a FUNC.
    """

    type_id: int
    kind: BtfKind
    name: str
    kind_flag: bool
    vlen: int
    size: int = 0
    ref: int = 0
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    members: tuple[BtfMember, ...] = ()
    params: tuple[BtfParam, ...] = ()
    enumerators: tuple[BtfEnumerator, ...] = ()
    array: BtfArray | None = None
    linkage: int = 0
    component_idx: int = -1
    secinfos: tuple[BtfSecInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """Where a member reached by a dotted path lives inside its outermost struct.

    :param offset: byte offset (for a bitfield, the byte holding its first bit).
    :param bit_offset: offset in bits from the start of the outermost struct.
    :param size: size in bytes; for a bitfield, the number of bytes from ``offset`` that
        cover all of its bits.
    :param bitfield_size: width in bits for a bitfield, 0 otherwise.
    :param type_id: BTF id of the member's type.
    :param type_name: C-like spelling of the member's type.
    """

    offset: int
    bit_offset: int
    size: int
    bitfield_size: int
    type_id: int
    type_name: str

    @property
    def is_bitfield(self) -> bool:
        """True when the member is a bitfield."""
        return self.bitfield_size != 0


def _bad(what: str) -> KernelImageError:
    return KernelImageError(
        f"malformed BTF: {what}",
        hint="extract the BTF again from a complete kernel image built with "
        "CONFIG_DEBUG_INFO_BTF=y",
    )


def _endian_of(blob: bytes | memoryview, at: int = 0) -> str | None:
    """Return the struct prefix for the BTF magic at ``at``, or None."""
    head = bytes(blob[at : at + 2])
    if head == b"\x9f\xeb":
        return "<"
    if head == b"\xeb\x9f":
        return ">"
    return None


def _check_header(blob: bytes | memoryview, at: int, available: int) -> tuple[str, int] | None:
    """Validate a BTF header at ``at``; return (endianness, total blob length) or None."""
    endian = _endian_of(blob, at)
    if endian is None or available < _HDR_LEN:
        return None
    _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        endian + "HBBIIIII", blob, at
    )
    if version != _BTF_VERSION or hdr_len != _HDR_LEN:
        return None
    if type_off % 4 or type_len % 4 or str_len == 0:
        return None
    if type_off + type_len > str_off and str_off + str_len > type_off:
        return None  # sections overlap
    total = hdr_len + max(type_off + type_len, str_off + str_len)
    if total > available:
        return None
    return endian, total


class Btf:
    """A parsed BTF blob.

    Type records are indexed by one linear pass in :meth:`parse`; members, parameters and
    enumerators are decoded on first use and cached.
    """

    def __init__(
        self,
        *,
        endian: str,
        types: bytes,
        strings: bytes,
        offsets: list[int],
        kinds: bytes,
        by_name: dict[str, list[int]],
    ) -> None:
        """Build from the pieces :meth:`parse` produces; use :meth:`parse` instead."""
        self._endian = endian
        self._types = types
        self._strings = strings
        self._offsets = offsets
        self._kinds = kinds
        self._by_name = by_name
        self._cache: dict[int, BtfType] = {}
        self._ptr_size: int | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def parse(cls, blob: bytes) -> Btf:
        """Parse a complete BTF blob (header, type section, string section).

        :raises KernelImageError: bad magic, unsupported version, truncated or inconsistent
            sections, unknown type kinds.
        """
        if len(blob) < _HDR_LEN:
            raise _bad(f"blob is {len(blob)} bytes, shorter than the {_HDR_LEN}-byte header")
        endian = _endian_of(blob)
        if endian is None:
            raise _bad(f"expected magic 0x{BTF_MAGIC:04x} at offset 0, found 0x{blob[:2].hex()}")
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "HBBIIIII", blob, 0
        )
        if version != _BTF_VERSION:
            raise _bad(f"expected version {_BTF_VERSION}, found {version}")
        if hdr_len < _HDR_LEN or hdr_len > len(blob):
            raise _bad(f"header length {hdr_len} is invalid for a {len(blob)}-byte blob")
        if type_off % 4 or type_len % 4:
            raise _bad(f"type section offset/length {type_off}/{type_len} not 4-byte aligned")
        types_start = hdr_len + type_off
        strs_start = hdr_len + str_off
        if types_start + type_len > len(blob) or strs_start + str_len > len(blob):
            need = max(types_start + type_len, strs_start + str_len)
            raise _bad(f"truncated: header needs {need} bytes but blob has {len(blob)}")
        types = bytes(blob[types_start : types_start + type_len])
        strings = bytes(blob[strs_start : strs_start + str_len])
        if not strings or strings[0] != 0 or strings[-1] != 0:
            raise _bad("string section must start and end with a NUL byte")

        offsets, kinds, by_name = cls._index(endian, types, strings)
        return cls(
            endian=endian,
            types=types,
            strings=strings,
            offsets=offsets,
            kinds=kinds,
            by_name=by_name,
        )

    @classmethod
    def from_image(cls, image: bytes, *, source: str = "the kernel image") -> Btf:
        """Locate the BTF blob inside a raw kernel image and parse it."""
        return cls.parse(find_btf_blob(image, source=source))

    @staticmethod
    def _index(
        endian: str, types: bytes, strings: bytes
    ) -> tuple[list[int], bytes, dict[str, list[int]]]:
        """Walk the type section once: offsets, kinds and a name -> ids index."""
        hdr = struct.Struct(endian + "III")
        unpack = hdr.unpack_from
        offsets: list[int] = [0]  # id 0 is void
        kinds = bytearray([0])
        by_name: dict[str, list[int]] = {}
        str_len = len(strings)
        find = strings.find
        extra = _EXTRA
        pos = 0
        end = len(types)
        type_id = 0
        while pos < end:
            if pos + 12 > end:
                raise _bad(f"type record at offset {pos} runs past the type section ({end})")
            name_off, info, _ = unpack(types, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            sizes = extra.get(kind)
            if sizes is None:
                raise _bad(f"unknown type kind {kind} at type section offset {pos}")
            if name_off >= str_len:
                raise _bad(f"name offset {name_off} outside the {str_len}-byte string section")
            type_id += 1
            offsets.append(pos)
            kinds.append(kind)
            if name_off:
                nul = find(b"\0", name_off)
                name = strings[name_off:nul].decode("utf-8", "replace")
                ids = by_name.get(name)
                if ids is None:
                    by_name[name] = [type_id]
                else:
                    ids.append(type_id)
            pos += 12 + sizes[0] + sizes[1] * vlen
        if pos != end:
            raise _bad(f"last type record runs past the type section ({pos} > {end})")
        return offsets, bytes(kinds), by_name

    # ------------------------------------------------------------------ raw access

    def __len__(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._offsets) - 1

    def _str(self, off: int) -> str:
        if off >= len(self._strings):
            raise _bad(f"name offset {off} outside the {len(self._strings)}-byte string section")
        nul = self._strings.find(b"\0", off)
        return self._strings[off:nul].decode("utf-8", "replace")

    def type(self, type_id: int) -> BtfType:
        """Decode (and cache) the type with id ``type_id`` (0 is ``void``).

        :raises KernelImageError: the id is outside the type table.
        """
        cached = self._cache.get(type_id)
        if cached is not None:
            return cached
        if type_id == 0:
            t = BtfType(type_id=0, kind=BtfKind.UNKN, name="void", kind_flag=False, vlen=0)
            self._cache[0] = t
            return t
        if not 0 < type_id < len(self._offsets):
            raise _bad(f"type id {type_id} outside 1..{len(self._offsets) - 1}")
        t = self._decode(type_id)
        self._cache[type_id] = t
        return t

    def _decode(self, type_id: int) -> BtfType:
        e = self._endian
        buf = self._types
        pos = self._offsets[type_id]
        name_off, info, word = struct.unpack_from(e + "III", buf, pos)
        kind = BtfKind((info >> 24) & 0x1F)
        vlen = info & 0xFFFF
        kind_flag = bool(info >> 31)
        name = self._str(name_off)
        body = pos + 12
        size = word if kind in _SIZED_KINDS else 0
        ref = 0 if kind in _SIZED_KINDS else word

        if kind == BtfKind.INT:
            (enc,) = struct.unpack_from(e + "I", buf, body)
            return BtfType(
                type_id,
                kind,
                name,
                kind_flag,
                vlen=vlen,
                size=size,
                int_encoding=(enc >> 24) & 0x0F,
                int_offset=(enc >> 16) & 0xFF,
                int_bits=enc & 0xFF,
            )
        if kind in (BtfKind.STRUCT, BtfKind.UNION):
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from(e + "III", buf, body + 12 * i)
                if kind_flag:
                    bits, bit_off = m_off >> 24, m_off & 0xFFFFFF
                else:
                    bits, bit_off = 0, m_off
                members.append(BtfMember(self._str(m_name), m_type, bit_off, bits))
            return BtfType(
                type_id, kind, name, kind_flag, vlen=vlen, size=size, members=tuple(members)
            )
        if kind == BtfKind.ARRAY:
            elem, index, nelems = struct.unpack_from(e + "III", buf, body)
            return BtfType(
                type_id, kind, name, kind_flag, vlen=vlen, array=BtfArray(elem, index, nelems)
            )
        if kind == BtfKind.ENUM:
            signed = kind_flag
            values = []
            for i in range(vlen):
                v_name, raw = struct.unpack_from(e + "II", buf, body + 8 * i)
                value = raw - (1 << 32) if signed and raw & 0x80000000 else raw
                values.append(BtfEnumerator(self._str(v_name), value))
            return BtfType(
                type_id, kind, name, kind_flag, vlen=vlen, size=size, enumerators=tuple(values)
            )
        if kind == BtfKind.ENUM64:
            values = []
            for i in range(vlen):
                v_name, lo, hi = struct.unpack_from(e + "III", buf, body + 12 * i)
                raw = (hi << 32) | lo
                value = raw - (1 << 64) if kind_flag and raw >> 63 else raw
                values.append(BtfEnumerator(self._str(v_name), value))
            return BtfType(
                type_id, kind, name, kind_flag, vlen=vlen, size=size, enumerators=tuple(values)
            )
        if kind == BtfKind.FUNC_PROTO:
            params = []
            for i in range(vlen):
                p_name, p_type = struct.unpack_from(e + "II", buf, body + 8 * i)
                params.append(BtfParam(self._str(p_name), p_type))
            return BtfType(type_id, kind, name, kind_flag, vlen=vlen, ref=ref, params=tuple(params))
        if kind == BtfKind.VAR:
            (linkage,) = struct.unpack_from(e + "I", buf, body)
            return BtfType(type_id, kind, name, kind_flag, vlen=vlen, ref=ref, linkage=linkage)
        if kind == BtfKind.DATASEC:
            infos = tuple(
                BtfSecInfo(*struct.unpack_from(e + "III", buf, body + 12 * i)) for i in range(vlen)
            )
            return BtfType(type_id, kind, name, kind_flag, vlen=vlen, size=size, secinfos=infos)
        if kind == BtfKind.DECL_TAG:
            (component,) = struct.unpack_from(e + "i", buf, body)
            return BtfType(
                type_id, kind, name, kind_flag, vlen=vlen, ref=ref, component_idx=component
            )
        if kind == BtfKind.FUNC:
            return BtfType(type_id, kind, name, kind_flag, vlen=vlen, ref=ref, linkage=vlen)
        # PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FLOAT, TYPE_TAG
        return BtfType(type_id, kind, name, kind_flag, vlen=vlen, size=size, ref=ref)

    def types(self) -> Iterator[BtfType]:
        """Iterate over all types (ids 1..N) in id order."""
        for type_id in range(1, len(self._offsets)):
            yield self.type(type_id)

    def ids_by_name(self, name: str, kinds: Iterable[BtfKind] | None = None) -> list[int]:
        """Ids of the types called ``name``, optionally restricted to ``kinds``."""
        ids = self._by_name.get(name, [])
        if kinds is None:
            return list(ids)
        wanted = {int(k) for k in kinds}
        return [i for i in ids if self._kinds[i] in wanted]

    def names(self, kinds: Iterable[BtfKind] | None = None) -> list[str]:
        """All type names, optionally restricted to ``kinds``."""
        if kinds is None:
            return list(self._by_name)
        wanted = {int(k) for k in kinds}
        return [n for n, ids in self._by_name.items() if any(self._kinds[i] in wanted for i in ids)]

    # ------------------------------------------------------------------ type helpers

    def resolve(self, type_id: int) -> BtfType:
        """Follow typedefs, const/volatile/restrict and type tags to the underlying type."""
        t = self.type(type_id)
        for _ in range(_MAX_TYPE_DEPTH):
            if t.kind not in _MODIFIER_KINDS:
                return t
            t = self.type(t.ref)
        raise _bad(f"type chain starting at id {type_id} is longer than {_MAX_TYPE_DEPTH}")

    @property
    def pointer_size(self) -> int:
        """Pointer size in bytes, inferred from ``long`` (8 when there is no ``long``)."""
        if self._ptr_size is None:
            self._ptr_size = 8
            for name in ("long int", "long unsigned int", "long", "unsigned long"):
                ints = self.ids_by_name(name, (BtfKind.INT,))
                if ints:
                    self._ptr_size = self.type(ints[0]).size
                    break
        return self._ptr_size

    def size_of(self, type_id: int) -> int:
        """Size in bytes of a type (arrays multiplied out, typedefs followed).

        :raises SymbolError: the type has no size (void, function, forward declaration).
        """
        t = self.type(type_id)
        for _ in range(_MAX_TYPE_DEPTH):
            if t.kind in _MODIFIER_KINDS:
                t = self.type(t.ref)
                continue
            if t.kind == BtfKind.ARRAY and t.array is not None:
                return t.array.nelems * self.size_of(t.array.elem_type)
            if t.kind == BtfKind.PTR:
                return self.pointer_size
            if t.kind == BtfKind.VAR:
                t = self.type(t.ref)
                continue
            if t.kind in _SIZED_KINDS:
                return t.size
            raise SymbolError(
                f"type {self.type_name(type_id)!r} ({t.kind.name}) has no size",
                hint="ask for a struct, union, scalar, pointer or array",
            )
        raise _bad(f"type chain starting at id {type_id} is longer than {_MAX_TYPE_DEPTH}")

    def type_name(self, type_id: int, _depth: int = 0) -> str:
        """A C-like spelling of a type: ``struct kvm_vcpu *``, ``u64``, ``int[4]``, ``void``."""
        if _depth > _MAX_TYPE_DEPTH:
            return "?"
        t = self.type(type_id)
        k = t.kind
        d = _depth + 1
        if type_id == 0:
            return "void"
        if k in (BtfKind.INT, BtfKind.FLOAT, BtfKind.TYPEDEF, BtfKind.FUNC, BtfKind.VAR):
            return t.name
        if k == BtfKind.STRUCT:
            return f"struct {t.name or '(anon)'}"
        if k == BtfKind.UNION:
            return f"union {t.name or '(anon)'}"
        if k in (BtfKind.ENUM, BtfKind.ENUM64):
            return f"enum {t.name or '(anon)'}"
        if k == BtfKind.FWD:
            return f"{'union' if t.kind_flag else 'struct'} {t.name}"
        if k == BtfKind.PTR:
            target = self.type(t.ref)
            if target.kind == BtfKind.FUNC_PROTO:
                args = ", ".join(self.type_name(p.type_id, d) for p in target.params)
                return f"{self.type_name(target.ref, d)} (*)({args})"
            inner = self.type_name(t.ref, d)
            return inner + ("*" if inner.endswith("*") else " *")
        if k in (BtfKind.CONST, BtfKind.VOLATILE, BtfKind.RESTRICT):
            qual = {BtfKind.CONST: "const", BtfKind.VOLATILE: "volatile"}.get(k, "restrict")
            inner = self.type_name(t.ref, d)
            return f"{inner} {qual}" if inner.endswith("*") else f"{qual} {inner}"
        if k == BtfKind.TYPE_TAG:
            return self.type_name(t.ref, d)
        if k == BtfKind.ARRAY and t.array is not None:
            return f"{self.type_name(t.array.elem_type, d)}[{t.array.nelems}]"
        if k == BtfKind.FUNC_PROTO:
            args = ", ".join(self.type_name(p.type_id, d) for p in t.params)
            return f"{self.type_name(t.ref, d)} ({args})"
        return f"{k.name.lower()} {t.name}".strip()

    # ------------------------------------------------------------------ structs

    def _composite_candidates(self, name: str) -> list[BtfType]:
        """Complete STRUCT/UNION definitions called ``name`` (``struct``/``union`` prefix ok)."""
        kinds: tuple[BtfKind, ...] = (BtfKind.STRUCT, BtfKind.UNION)
        for prefix, kind in (("struct ", BtfKind.STRUCT), ("union ", BtfKind.UNION)):
            if name.startswith(prefix):
                name, kinds = name[len(prefix) :].strip(), (kind,)
        found = [self.type(i) for i in self.ids_by_name(name, kinds)]
        if found:
            return found
        # Fall back to a typedef of a struct/union (``typedef struct {...} foo_t``).
        for tid in self.ids_by_name(name, (BtfKind.TYPEDEF,)):
            t = self.resolve(tid)
            if t.kind in (BtfKind.STRUCT, BtfKind.UNION):
                found.append(t)
        if found:
            return found
        close = difflib.get_close_matches(
            name, self.names((BtfKind.STRUCT, BtfKind.UNION)), n=5, cutoff=0.7
        )
        if self.ids_by_name(name, (BtfKind.FWD,)):
            detail = "only a forward declaration of it is in the BTF"
        elif close:
            detail = "close names: " + ", ".join(close)
        else:
            detail = "no similar names"
        raise SymbolError(
            f"struct/union {name!r} not found in the kernel BTF ({detail})",
            hint="check the spelling or the kernel version/config",
        )

    def struct_type(self, name: str) -> BtfType:
        """The STRUCT/UNION type called ``name``.

        :raises SymbolError: no such type, or several definitions of different sizes.
        """
        cands = self._composite_candidates(name)
        sizes = {t.size for t in cands}
        if len(sizes) > 1:
            raise SymbolError(
                f"struct {name!r} is ambiguous: {len(cands)} BTF definitions with sizes "
                f"{sorted(sizes)}",
                hint="use a member path that is unique, or report this kernel",
            )
        return cands[0]

    def struct_size(self, name: str) -> int:
        """``sizeof(struct name)`` in bytes.

        :raises SymbolError: no such struct/union.
        """
        return self.struct_type(name).size

    def struct_members(self, name: str) -> list[str]:
        """Names of the members of ``struct name``, anonymous members flattened."""
        t = self.struct_type(name)
        return [n for n, _m, _o in self._flat_members(t, 0)]

    def _flat_members(
        self, t: BtfType, base_bits: int, depth: int = 0
    ) -> Iterator[tuple[str, BtfMember, int]]:
        """(name, member, absolute bit offset) for ``t``, descending into anonymous members."""
        if depth > _MAX_TYPE_DEPTH:
            return
        for m in t.members:
            if m.name:
                yield m.name, m, base_bits + m.bit_offset
            else:
                inner = self.resolve(m.type_id)
                if inner.kind in (BtfKind.STRUCT, BtfKind.UNION):
                    yield from self._flat_members(inner, base_bits + m.bit_offset, depth + 1)

    def _find_member(self, t: BtfType, name: str) -> tuple[BtfMember, int] | None:
        """Find a member by name (direct first, then inside anonymous members)."""
        for m in t.members:
            if m.name == name:
                return m, m.bit_offset
        for _n, m, bits in self._flat_members(t, 0):
            if _n == name:
                return m, bits
        return None

    def _walk(self, root: BtfType, parts: list[str], path: str) -> MemberInfo:
        current = root
        bit_offset = 0
        member: BtfMember | None = None
        type_id = root.type_id
        walked = root.name
        for part in parts:
            match = _PATH_PART.match(part)
            if match is None:
                raise SymbolError(
                    f"bad member path {path!r}: {part!r} is not an identifier",
                    hint="write it like 'kvm_vcpu.arch.fault.esr_el2' or 'vgic_cpu.lrs[2]'",
                )
            name, indexes = match.group(1), [int(i) for i in _INDEX.findall(match.group(2))]
            if current.kind not in (BtfKind.STRUCT, BtfKind.UNION):
                raise SymbolError(
                    f"cannot take member {name!r} of {walked!r} in {path!r}: it is "
                    f"{self.type_name(type_id)!r}, not a struct or union",
                    hint="offsets cannot cross pointers; start a new path at the pointed-to struct",
                )
            found = self._find_member(current, name)
            if found is None:
                names = [n for n, _m, _o in self._flat_members(current, 0)]
                close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
                shown = close or names[:12]
                label = "close names" if close else "members"
                raise SymbolError(
                    f"{self.type_name(current.type_id)} has no member {name!r} (path {path!r}; "
                    f"{label}: {', '.join(shown)}{'' if close or len(names) <= 12 else ', ...'})",
                    hint="check the member path against this kernel's struct layout",
                )
            member, rel_bits = found
            bit_offset += rel_bits
            type_id = member.type_id
            walked = f"{walked}.{name}"
            for idx in indexes:
                arr = self.resolve(type_id)
                if arr.kind != BtfKind.ARRAY or arr.array is None:
                    raise SymbolError(
                        f"cannot index {walked!r} in {path!r}: it is "
                        f"{self.type_name(type_id)!r}, not an array",
                        hint="remove the [index]",
                    )
                if idx >= arr.array.nelems:
                    raise SymbolError(
                        f"index {idx} out of range for {walked!r} "
                        f"({arr.array.nelems} elements) in {path!r}",
                        hint=f"use an index below {arr.array.nelems}",
                    )
                type_id = arr.array.elem_type
                bit_offset += idx * self.size_of(type_id) * 8
                walked = f"{walked}[{idx}]"
                member = None  # an array element is never a bitfield
            current = self.resolve(type_id)

        if member is not None and member.bitfield_size:
            bits = member.bitfield_size
            size = ((bit_offset % 8) + bits + 7) // 8
        else:
            bits = 0
            size = self.size_of(type_id) if parts else root.size
        return MemberInfo(
            offset=bit_offset // 8,
            bit_offset=bit_offset,
            size=size,
            bitfield_size=bits,
            type_id=type_id,
            type_name=self.type_name(type_id),
        )

    def member_info(self, path: str) -> MemberInfo:
        """Resolve ``"struct.member.submember"`` to its offset, size and type.

        The first component names a struct or union; each further component names a member
        (anonymous struct/union members are searched transparently) and may be followed by
        ``[i]`` to index an array. A path with no member refers to the whole struct.

        :raises SymbolError: unknown struct or member, ambiguous struct, path through a
            pointer, bad array index.
        """
        head, *parts = path.strip().split(".")
        if not head or any(not p for p in parts):
            raise SymbolError(
                f"bad member path {path!r}: empty component",
                hint="write it like 'kvm_vcpu.arch.fault.esr_el2'",
            )
        candidates = self._composite_candidates(head)
        results: list[MemberInfo] = []
        errors: list[SymbolError] = []
        for root in candidates:
            try:
                results.append(self._walk(root, parts, path))
            except SymbolError as exc:
                errors.append(exc)
        if not results:
            raise errors[0]
        distinct = {(r.bit_offset, r.size, r.bitfield_size) for r in results}
        if len(distinct) > 1:
            offsets = sorted({r.offset for r in results})
            raise SymbolError(
                f"member path {path!r} is ambiguous: {len(candidates)} BTF definitions of "
                f"{head!r} give offsets {[hex(o) for o in offsets]}",
                hint="this kernel has several incompatible definitions; report it",
            )
        return results[0]

    def member_offset(self, path: str) -> int:
        """Byte offset of a member (for a bitfield, the byte holding its first bit)."""
        return self.member_info(path).offset

    def member_bit_offset(self, path: str) -> int:
        """Offset of a member in bits from the start of the outermost struct."""
        return self.member_info(path).bit_offset

    def member_size(self, path: str) -> int:
        """Size of a member in bytes (for a bitfield: bytes from its offset covering its bits)."""
        return self.member_info(path).size

    # ------------------------------------------------------------------ functions, enums

    def _func(self, name: str) -> BtfType:
        ids = self.ids_by_name(name, (BtfKind.FUNC,))
        if not ids:
            close = difflib.get_close_matches(name, self.names((BtfKind.FUNC,)), n=5, cutoff=0.75)
            detail = ("close names: " + ", ".join(close)) if close else "no similar names"
            raise SymbolError(
                f"function {name!r} not found in the kernel BTF ({detail})",
                hint="BTF only lists functions that were not fully inlined; check the name",
            )
        return self.type(ids[0])

    def has_func(self, name: str) -> bool:
        """True when the BTF has a FUNC called ``name``."""
        return bool(self.ids_by_name(name, (BtfKind.FUNC,)))

    def func_params(self, name: str) -> list[tuple[str, str]]:
        """``[(param name, type name), ...]`` of function ``name``.

        :raises SymbolError: no FUNC with that name.
        """
        proto = self.type(self._func(name).ref)
        if proto.kind != BtfKind.FUNC_PROTO:
            raise _bad(f"FUNC {name!r} does not point to a FUNC_PROTO")
        return [(p.name, self.type_name(p.type_id)) for p in proto.params]

    def func_return_type(self, name: str) -> str:
        """Type name of the return value of function ``name``."""
        proto = self.type(self._func(name).ref)
        return self.type_name(proto.ref)

    def enum_values(self, name: str) -> dict[str, int]:
        """``{enumerator: value}`` of ``enum name`` (ENUM or ENUM64).

        :raises SymbolError: no enum with that name.
        """
        name = name.removeprefix("enum ").strip()
        ids = self.ids_by_name(name, (BtfKind.ENUM, BtfKind.ENUM64))
        if not ids:
            raise SymbolError(
                f"enum {name!r} not found in the kernel BTF",
                hint="check the spelling or the kernel version",
            )
        return {e.name: e.value for e in self.type(ids[0]).enumerators}


def find_btf_blob(image: bytes, *, source: str = "the kernel image") -> bytes:
    """Locate the embedded ``.BTF`` blob in a raw kernel image and return a copy of it.

    Every occurrence of the header magic with version 1 and ``hdr_len`` 24 is a candidate;
    candidates whose section offsets fit in the buffer are parsed fully and the largest that
    parses is returned.

    :param source: how to name the image in the error message (e.g. its path).
    :raises KernelImageError: no candidate parses.
    """
    view = memoryview(image)
    candidates: list[tuple[int, int]] = []
    for pattern in (b"\x9f\xeb\x01", b"\xeb\x9f\x01"):
        start = 0
        while True:
            at = image.find(pattern, start)
            if at < 0:
                break
            start = at + 1
            checked = _check_header(view, at, len(image) - at)
            if checked is not None:
                candidates.append((checked[1], at))
    for total, at in sorted(candidates, reverse=True):
        blob = bytes(view[at : at + total])
        try:
            Btf.parse(blob)
        except KernelImageError:
            continue
        return blob
    raise KernelImageError(
        f"no BTF found in {source}",
        hint="the kernel needs CONFIG_DEBUG_INFO_BTF=y",
    )


def load_btf_from_file(path: Path) -> Btf:
    """Read a file that is either a raw BTF blob (``/sys/kernel/btf/vmlinux``) or a kernel
    image containing one, and parse it.

    :raises KernelImageError: unreadable file or no BTF in it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KernelImageError(
            f"cannot read {path}: {exc.strerror}", hint="check the path and permissions"
        ) from exc
    if _endian_of(data) is not None:
        return Btf.parse(data)
    return Btf.from_image(data, source=str(path))


def extract_layout(btf: Btf, paths: Iterable[str]) -> dict[str, dict[str, int]]:
    """Resolve member paths into a JSON-serializable ``{path: {"offset", "size", ...}}``.

    A bare struct name gives ``{"offset": 0, "size": sizeof}``. Bitfields also carry
    ``"bit_offset"`` (from the start of the outermost struct) and ``"bit_size"``.

    :raises SymbolError: the first path that cannot be resolved.
    """
    layout: dict[str, dict[str, int]] = {}
    for path in paths:
        info = btf.member_info(path)
        entry = {"offset": info.offset, "size": info.size}
        if info.is_bitfield:
            entry["bit_offset"] = info.bit_offset
            entry["bit_size"] = info.bitfield_size
        layout[path] = entry
    return layout

"""Struct member offsets from the BPF Type Format (BTF) embedded in an arm64 kernel Image.

Probe captures read kernel structs by member path (``kvm_vcpu.arch.fault.esr_el2``), and
those offsets move between kernel versions and configs. A kernel built with
``CONFIG_DEBUG_INFO_BTF=y`` carries every type it was compiled with in its ``.BTF``
section, so the offsets come from the kernel itself rather than a hand-kept table.

The raw format is read by :mod:`btf_parse`; this module resolves member paths in it.
``tests/integration/test_btf_bpftool.py`` checks the results against Debian's
``bpftool btf dump`` of the same blob.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import KernelImageError, SymbolError
from tracekit.kernel.btf_parse import (
    COMPOSITE,
    MAX_DEPTH,
    BtfTypes,
    Member,
    find_btf_blob,
    locate,
)

__all__ = ["Btf", "MemberInfo", "extract_layout", "find_btf_blob", "load_btf_from_file"]

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


class Btf(BtfTypes):
    """A parsed BTF blob (:meth:`parse`) that resolves member paths."""

    def _flat(self, type_id: int, base: int = 0, depth: int = 0) -> Iterator[tuple[Member, int]]:
        """(member, bit offset) of a struct's named members, those of its anonymous struct
        and union members included (C reaches them by name through the outer struct)."""
        for m in self.members(type_id):
            if m.name:
                yield m, base + m.bit_offset
            elif depth < MAX_DEPTH and self.kind(inner := self.resolve(m.type_id)) in COMPOSITE:
                yield from self._flat(inner, base + m.bit_offset, depth + 1)

    def _find(self, type_id: int, name: str) -> tuple[Member, int] | None:
        # A direct member first: C resolves a name in the outer struct before anonymous ones.
        for m in self.members(type_id):
            if m.name == name:
                return m, m.bit_offset
        return next(((m, bits) for m, bits in self._flat(type_id) if m.name == name), None)

    def _walk(self, root: int, parts: list[str], path: str) -> MemberInfo:
        current, type_id, bits, walked = root, root, 0, self.name(root)
        member: Member | None = None
        for part in parts:
            match = _PATH_PART.match(part)
            if match is None:
                raise SymbolError(
                    f"bad member path {path!r}: {part!r} is not an identifier",
                    hint="write it like 'kvm_vcpu.arch.fault.esr_el2' or 'vgic_cpu.lrs[2]'",
                )
            name = match.group(1)
            if self.kind(current) not in COMPOSITE:
                raise SymbolError(
                    f"cannot take member {name!r} of {walked!r} in {path!r}: it is "
                    f"{self.spell(type_id)!r}, not a struct or union",
                    hint="offsets cannot cross pointers; start a new path at the pointed-to struct",
                )
            found = self._find(current, name)
            if found is None:
                names = [m.name for m, _bits in self._flat(current)]
                close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
                more = "" if close or len(names) <= 12 else ", ..."
                label = "close names" if close else "members"
                raise SymbolError(
                    f"{self.spell(current)} has no member {name!r} (path {path!r}; "
                    f"{label}: {', '.join(close or names[:12])}{more})",
                    hint="check the member path against this kernel's struct layout",
                )
            member, rel_bits = found
            bits += rel_bits
            type_id = member.type_id
            walked = f"{walked}.{name}"
            for index in map(int, _INDEX.findall(match.group(2))):
                array = self.array(self.resolve(type_id))
                if array is None:
                    raise SymbolError(
                        f"cannot index {walked!r} in {path!r}: it is "
                        f"{self.spell(type_id)!r}, not an array",
                        hint="remove the [index]",
                    )
                if index >= array[1]:
                    raise SymbolError(
                        f"index {index} out of range for {walked!r} ({array[1]} elements) "
                        f"in {path!r}",
                        hint=f"use an index below {array[1]}",
                    )
                type_id = array[0]
                bits += index * self.size(type_id) * 8
                walked = f"{walked}[{index}]"
                member = None  # an array element is never a bitfield
            current = self.resolve(type_id)
        if member is not None and member.bitfield_size:
            width = member.bitfield_size
            return MemberInfo(bits // 8, bits, (bits % 8 + width + 7) // 8, width)
        return MemberInfo(bits // 8, bits, self.size(type_id), 0)

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
        roots = self.structs.get(head, [])
        if not roots:
            close = difflib.get_close_matches(head, list(self.structs), n=5, cutoff=0.7)
            if head in self.fwds:
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
    return locate(data, str(path), Btf)[1]


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

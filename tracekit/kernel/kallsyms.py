"""Kernel symbol table recovered from a raw arm64 ``Image``, and reading the Image at an address.

Debian ships no ``System.map`` for its cloud kernels, but a kernel built with
``CONFIG_KALLSYMS=y`` embeds a compressed symbol table. :func:`extract_symbols` recovers it
with the ``vmlinux-to-elf`` package (called in-process) and returns a :class:`SymbolTable`
that resolves names to addresses and addresses back to ``func+0x10``. Without
``CONFIG_KALLSYMS_ALL`` the table holds text symbols only (plus a few markers).

The addresses are link-time addresses, which are the runtime ones when the kernel boots with
``nokaslr``. :func:`image_base` finds the virtual address of file offset 0 by decoding the
branch to ``primary_entry`` in the Image header, so :func:`instruction_at` can read the
instruction at a kernel virtual address straight from the file.

Only :func:`extract_symbols` and the ``vmlinux-to-elf`` call do I/O; everything else parses
bytes or JSON already in memory. The Image header itself is :mod:`tracekit.kernel.image`
(its names are exported here too). The rest is one unit on purpose, a little over 400
lines: :class:`SymbolTable`, the address-to-file-offset mapping that needs it
(:func:`image_base`) and the extraction that fills it in are read and changed together.
"""

from __future__ import annotations

import bisect
import difflib
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from tracekit.errors import EnvironmentProblem, KernelImageError, SymbolError
from tracekit.kernel.image import ARM64_IMAGE_MAGIC, ImageHeader, read_image_header

__all__ = [
    "ARM64_IMAGE_MAGIC",
    "ImageHeader",
    "Symbol",
    "SymbolTable",
    "extract_symbols",
    "image_base",
    "instruction_at",
    "read_image_header",
    "symbols_from_image",
]

_JSON_FORMAT = "tracekit-kallsyms/1"
_TEXT_KINDS = frozenset("TtWw")
# Symbols the header's entry branch may target, newest kernels first.
_ENTRY_SYMBOLS = ("primary_entry", "stext")


class Symbol(NamedTuple):
    """One kallsyms entry: address, ``nm``-style kind letter, name."""

    address: int
    kind: str
    name: str


def _symbol_rank(sym: Symbol) -> tuple[bool, bool, bool]:
    """Sort key choosing which of several symbols at one address names it (lowest wins)."""
    return (sym.kind not in _TEXT_KINDS, sym.name.startswith("_"), sym.kind.islower())


class SymbolTable:
    """Kernel symbols by name and by address.

    :param symbols: the entries, any order; duplicates of a name are allowed (static
        functions with the same name in different files).
    :param image_base: virtual address of file offset 0 of the Image, when known.
    """

    def __init__(self, symbols: Sequence[Symbol], *, image_base: int | None = None) -> None:
        """Index ``symbols`` by name and by address."""
        self._symbols: list[Symbol] = sorted(symbols)
        self._addrs: list[int] = [s.address for s in self._symbols]
        self._by_name: dict[str, list[Symbol]] = {}
        for sym in self._symbols:
            self._by_name.setdefault(sym.name, []).append(sym)
        # For name_at: one preferred symbol per distinct address.
        best: dict[int, Symbol] = {}
        for sym in self._symbols:
            cur = best.get(sym.address)
            if cur is None or _symbol_rank(sym) < _symbol_rank(cur):
                best[sym.address] = sym
        self._uniq_addrs: list[int] = sorted(best)
        self._uniq_syms: list[Symbol] = [best[a] for a in self._uniq_addrs]
        self.image_base: int | None = image_base

    # ------------------------------------------------------------------ container protocol

    def __len__(self) -> int:
        """Number of entries (a duplicated name counts once per address)."""
        return len(self._symbols)

    def __iter__(self) -> Iterator[Symbol]:
        """Entries in address order."""
        return iter(self._symbols)

    def __contains__(self, name: object) -> bool:
        """``name in table`` is :meth:`has`."""
        return isinstance(name, str) and name in self._by_name

    def __repr__(self) -> str:
        """Short summary."""
        base = "unknown" if self.image_base is None else hex(self.image_base)
        return f"<SymbolTable {len(self)} symbols, image base {base}>"

    # ------------------------------------------------------------------ by name

    def has(self, name: str) -> bool:
        """True when at least one symbol is called ``name``."""
        return name in self._by_name

    def _entries(self, name: str) -> list[Symbol]:
        entries = self._by_name.get(name)
        if entries:
            return entries
        close = self.close_names(name)
        detail = ("close names: " + ", ".join(close)) if close else "no similar names"
        raise SymbolError(
            f"symbol {name!r} not in the kernel symbol table ({detail})",
            hint="it may be inlined or not exist in this kernel; without "
            "CONFIG_KALLSYMS_ALL only text symbols are listed",
        )

    def close_names(self, name: str, n: int = 5) -> list[str]:
        """Up to ``n`` symbol names similar to ``name`` (for error messages)."""
        names = list(self._by_name)
        # Prefer names that contain the query or are contained in it; cheap and relevant.
        subs = sorted((x for x in names if name in x or (len(x) > 3 and x in name)), key=len)
        if len(subs) >= n:
            return subs[:n]
        fuzzy = difflib.get_close_matches(name, names, n=n, cutoff=0.8)
        return (subs + [f for f in fuzzy if f not in subs])[:n]

    def addresses(self, name: str) -> list[int]:
        """All addresses of symbols called ``name``, ascending.

        :raises SymbolError: no such symbol.
        """
        return sorted({s.address for s in self._entries(name)})

    def address(self, name: str) -> int:
        """The address of ``name``.

        :raises SymbolError: no such symbol, or the name is ambiguous (several addresses;
            use :meth:`addresses` and choose).
        """
        addrs = self.addresses(name)
        if len(addrs) > 1:
            shown = ", ".join(self.symbolize_near(a, name) for a in addrs)
            raise SymbolError(
                f"symbol {name!r} is ambiguous: {len(addrs)} addresses ({shown})",
                hint="use SymbolTable.addresses() and pick one, or probe all of them",
            )
        return addrs[0]

    def symbolize_near(self, addr: int, name: str) -> str:
        """``0x...`` with the preceding different symbol, to tell duplicates apart."""
        i = bisect.bisect_left(self._uniq_addrs, addr) - 1
        if i >= 0:
            prev = self._uniq_syms[i]
            if prev.name != name:
                return f"0x{addr:x} after {prev.name}"
        return f"0x{addr:x}"

    def kind(self, name: str) -> str:
        """The ``nm``-style kind letter (``T`` global text, ``t`` local text, ...).

        For a duplicated name, the kind of the lowest-addressed entry.

        :raises SymbolError: no such symbol.
        """
        return self._entries(name)[0].kind

    # ------------------------------------------------------------------ by address

    def lookup(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol at or before ``addr`` and the offset into it, or None below the first."""
        i = bisect.bisect_right(self._uniq_addrs, addr) - 1
        if i < 0:
            return None
        sym = self._uniq_syms[i]
        return sym, addr - sym.address

    def name_at(self, addr: int) -> str | None:
        """Name of the symbol containing ``addr`` (the nearest one at or below it).

        Returns None below the first symbol or past the last one (symbol sizes are not
        known, so anything past the last symbol is considered outside the table).
        """
        if not self._symbols or addr > self._addrs[-1]:
            return None
        found = self.lookup(addr)
        return None if found is None else found[0].name

    def symbolize(self, addr: int) -> str:
        """``"func+0x10"`` (``"func"`` at offset 0), or ``"0x..."`` outside the table."""
        if not self._symbols or addr > self._addrs[-1]:
            return f"0x{addr:x}"
        found = self.lookup(addr)
        if found is None:
            return f"0x{addr:x}"
        sym, off = found
        return f"{sym.name}+0x{off:x}" if off else sym.name

    # ------------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form: ``{"format", "image_base", "symbols": [[addr, kind, name]]}``."""
        return {
            "format": _JSON_FORMAT,
            "image_base": self.image_base,
            "symbols": [[s.address, s.kind, s.name] for s in self._symbols],
        }

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object) -> SymbolTable:
        """Rebuild from :meth:`to_dict` output (or a bare list of ``[addr, kind, name]``).

        :raises SymbolError: the data does not have that shape.
        """
        base: int | None = None
        rows: object = data
        if isinstance(data, dict):
            if data.get("format") != _JSON_FORMAT:
                raise SymbolError(
                    f"symbol cache has format {data.get('format')!r}, expected {_JSON_FORMAT!r}",
                    hint="delete the cached symbol file and rebuild it",
                )
            raw_base = data.get("image_base")
            if raw_base is not None and not isinstance(raw_base, int):
                raise SymbolError(
                    "symbol cache image_base is not an integer",
                    hint="delete the cached symbol file and rebuild it",
                )
            base = raw_base
            rows = data.get("symbols")
        if not isinstance(rows, list):
            raise SymbolError(
                "symbol cache must hold a list of [address, kind, name] rows",
                hint="delete the cached symbol file and rebuild it",
            )
        symbols: list[Symbol] = []
        for row in rows:
            if (
                not isinstance(row, list | tuple)
                or len(row) != 3
                or not isinstance(row[0], int)
                or not isinstance(row[1], str)
                or not isinstance(row[2], str)
            ):
                raise SymbolError(
                    f"bad symbol cache row {row!r}: expected [address, kind, name]",
                    hint="delete the cached symbol file and rebuild it",
                )
            symbols.append(Symbol(row[0], row[1], row[2]))
        return cls(symbols, image_base=base)

    @classmethod
    def from_json(cls, text: str | bytes) -> SymbolTable:
        """Rebuild from :meth:`to_json` text.

        :raises SymbolError: not valid JSON or not the expected shape.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SymbolError(
                f"symbol cache is not valid JSON ({exc})",
                hint="delete the cached symbol file and rebuild it",
            ) from exc
        return cls.from_dict(data)


def image_base(image: bytes, symbols: SymbolTable) -> int:
    """Virtual address at which file offset 0 of the Image is linked.

    Uses, in order: ``symbols.image_base`` if set; the header's entry branch and the
    address of ``primary_entry`` (``stext`` before 5.8); the ``_text`` symbol.

    :raises KernelImageError: not an arm64 Image.
    :raises SymbolError: none of these is available.
    """
    if symbols.image_base is not None:
        return symbols.image_base
    header = read_image_header(image)
    if header.entry_offset is not None:
        for name in _ENTRY_SYMBOLS:
            if symbols.has(name):
                addrs = symbols.addresses(name)
                if len(addrs) == 1:
                    return addrs[0] - header.entry_offset
    if symbols.has("_text") and len(symbols.addresses("_text")) == 1:
        return symbols.address("_text")
    raise SymbolError(
        "cannot tell where the Image is linked: no primary_entry/stext/_text symbol",
        hint="extract the symbol table from this same Image with extract_symbols()",
    )


def instruction_at(image: bytes, symbols: SymbolTable, addr: int) -> int:
    """The 32-bit A64 instruction at kernel virtual address ``addr`` in the Image file.

    A64 instructions are little-endian regardless of the kernel's data endianness.

    :raises SymbolError: ``addr`` is not inside the Image file or is not 4-byte aligned.
    """
    base = image_base(image, symbols)
    offset = addr - base
    if addr % 4 or not 0 <= offset <= len(image) - 4:
        raise SymbolError(
            f"address 0x{addr:x} is not an aligned address inside the Image file "
            f"(0x{base:x}..0x{base + len(image):x})",
            hint="pass a text address from this kernel's symbol table",
        )
    value: int = struct.unpack_from("<I", image, offset)[0]
    return value


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _captured_root_logging() -> Iterator[_ListHandler]:
    """vmlinux-to-elf logs chattily to the root logger: collect that instead of printing it."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = _ListHandler()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def symbols_from_image(image: bytes, *, source: str = "the kernel image") -> SymbolTable:
    """Recover the kallsyms table from an arm64 Image already in memory.

    Runs ``vmlinux-to-elf``'s ``KallsymsFinder`` in-process (about 3 s for a 27 MB Image);
    its log output is captured and only shown in the error message on failure.

    :raises EnvironmentProblem: ``vmlinux-to-elf`` is not installed.
    :raises KernelImageError: no kallsyms table found.
    """
    try:
        from vmlinux_to_elf.core.auto_unpack import VmlinuzDecompressor
        from vmlinux_to_elf.core.kallsyms import KallsymsFinder
    except ImportError as exc:
        raise EnvironmentProblem(
            "the vmlinux-to-elf package is not installed",
            hint="pip install 'vmlinux-to-elf>=1.4.0'",
        ) from exc

    with _captured_root_logging() as log:
        try:
            raw = VmlinuzDecompressor(image).decompressed or image
            read_image_header(raw, source=source)  # refuse non-arm64 before the slow search
            finder = KallsymsFinder(raw, 64)
        except KernelImageError:
            raise
        except Exception as exc:  # vmlinux-to-elf raises many kinds of errors
            last = log.lines[-1].strip() if log.lines else ""
            raise KernelImageError(
                f"no kallsyms table found in {source} ({type(exc).__name__}: {exc}"
                f"{'; ' + last if last else ''})",
                hint="the kernel needs CONFIG_KALLSYMS=y",
            ) from exc

    symbols = [
        Symbol(int(addr), name[0], name[1:])
        for addr, name in zip(finder.kernel_addresses, finder.symbol_names, strict=True)
        if name
    ]
    table = SymbolTable(symbols)
    base: int | None = None
    try:
        base = image_base(raw, table)
    except SymbolError:
        candidate = getattr(finder, "kernel_text_candidate", None)
        base = candidate if isinstance(candidate, int) else None
    table.image_base = base
    return table


def extract_symbols(image_path: Path) -> SymbolTable:
    """Read an arm64 kernel Image (raw, or compressed vmlinuz) and recover its symbols.

    :raises KernelImageError: the file cannot be read, is not arm64, or has no kallsyms.
    :raises EnvironmentProblem: ``vmlinux-to-elf`` is not installed.
    """
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        raise KernelImageError(
            f"cannot read kernel image {image_path}: {exc.strerror}",
            hint="check the path and permissions",
        ) from exc
    return symbols_from_image(data, source=str(image_path))

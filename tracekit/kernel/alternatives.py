"""The kernel text as it runs: arm64 boot-time alternatives applied to the Image (pure).

The Image holds the kernel's instructions as linked. Early in boot, ``apply_boot_alternatives``
and ``apply_alternatives_all`` (arch/arm64/kernel/alternative.c, v6.1 and v6.12) walk the
table ``__alt_instructions .. __alt_instructions_end`` and rewrite every site whose cpucap
the system has. Each entry is a ``struct alt_instr`` (arch/arm64/include/asm/alternative.h)::

    s32 orig_offset;  /* offset to the original instruction(s), from this field */
    s32 alt_offset;   /* offset to the replacement (or the callback), from this field */
    u16 cpucap;       /* bit 15 (ARM64_CB_BIT, alternative-macros.h): a callback entry */
    u8  orig_len;     /* bytes patched */
    u8  alt_len;      /* bytes of replacement; 0 for a callback */

``__apply_alternatives`` skips an entry unless ``cpus_have_cap(ALT_CAP(alt))``; otherwise it
calls the callback at ``ALT_REPL_PTR`` (``ALT_HAS_CB``) or ``patch_alternative``, which
copies the replacement and re-targets PC-relative branches and ``adrp`` (``get_alt_insn``).
``alternative_has_cap_likely()`` (asm/alternative-macros.h) emits ``b l_no`` with the
callback ``alt_cb_patch_nops``, which turns it into a NOP; ``cpus_have_final_cap()`` begins
with one of those for ``ARM64_ALWAYS_SYSTEM`` (``system_capabilities_finalized()``), a
cpucap every boot sets (cpufeature.c ``has_always``). So a 6.12 function that tests a final
cap starts, in the Image, with a branch the running kernel never takes.

:class:`RunningText` answers "which instruction(s) can run at ADDR": the Image's own when
no entry covers it; the patched one when the entry's cpucap is known (the probe set lists
the cpucaps every boot sets and those tracekit's machines never set, by this kernel's
numbering); both the original and the replacement when the cap depends on the CPU; none
(unknown) where another callback computes the code at boot (``kvm_update_va_mask`` and the
like). Decoders treat a two-way site conservatively and an unknown one as opaque.

Where the table is: kallsyms names ``__alt_instructions`` when the kernel has
``CONFIG_KALLSYMS_ALL`` (Debian's 6.12); without it (Debian's 6.1) the Image still says:
``apply_boot_alternatives`` builds its ``struct alt_region {begin, end}`` from an address it
forms with ``adrp``/``add``, and because arm64 links its relocatable kernel with
``--no-apply-dynamic-relocs`` (arch/arm64/Makefile) the two pointers are zero in the file
and carried by ``R_AARCH64_RELATIVE`` relocations whose addends are the table's bounds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tracekit.kernel.kallsyms import SymbolTable, image_base

__all__ = [
    "ALT_INSTR",
    "CB_BIT",
    "AltEntry",
    "CpuCaps",
    "RunningText",
    "find_table",
    "parse_table",
    "running_text",
]

#: ``struct alt_instr``: s32 orig_offset, s32 alt_offset, u16 cpucap, u8 orig_len, u8 alt_len.
ALT_INSTR = struct.Struct("<iiHBB")
#: ARM64_CB_BIT (1 << ARM64_CB_SHIFT, ARM64_CB_SHIFT = 15).
CB_BIT = 1 << 15
NOP = 0xD503201F
#: ELF ``R_AARCH64_RELATIVE``: the word at r_offset becomes (load offset +) r_addend.
R_AARCH64_RELATIVE = 0x403
#: Functions that build the kernel's alt_region, newest first (alternative.c).
_REGION_BUILDERS = ("apply_boot_alternatives", "apply_alternatives_all")
#: The callback that turns every instruction of its site into a NOP (alternative.c).
NOPS_CALLBACK = "alt_cb_patch_nops"


@dataclass(frozen=True)
class AltEntry:
    """One ``struct alt_instr``, with its offsets resolved to addresses."""

    orig: int
    #: Replacement code, or the callback function for a callback entry.
    repl: int
    cpucap: int
    callback: bool
    orig_len: int
    alt_len: int


@dataclass(frozen=True)
class CpuCaps:
    """What the probe set knows about cpucaps, by this kernel's numbering
    (arch/arm64/tools/cpucaps, a sorted list: the numbers move between versions)."""

    #: cpucap -> name: set on every boot (ARM64_ALWAYS_BOOT, ARM64_ALWAYS_SYSTEM).
    applied: Mapping[int, str] = field(default_factory=dict)
    #: cpucap -> name: never set on the machines tracekit boots.
    absent: Mapping[int, str] = field(default_factory=dict)


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _word(image: bytes, base: int, addr: int) -> int | None:
    off = addr - base
    if addr % 4 or not 0 <= off <= len(image) - 4:
        return None
    value: int = struct.unpack_from("<I", image, off)[0]
    return value


def parse_table(image: bytes, base: int, start: int, end: int) -> tuple[AltEntry, ...]:
    """The entries between ``start`` and ``end`` (kernel virtual addresses)."""
    entries = []
    for at in range(start, end - ALT_INSTR.size + 1, ALT_INSTR.size):
        orig_off, alt_off, cap, orig_len, alt_len = ALT_INSTR.unpack_from(image, at - base)
        entries.append(
            AltEntry(
                orig=at + orig_off,
                repl=at + 4 + alt_off,
                cpucap=cap & ~CB_BIT,
                callback=bool(cap & CB_BIT),
                orig_len=orig_len,
                alt_len=alt_len,
            )
        )
    return tuple(entries)


def _plausible(image: bytes, base: int, start: int, end: int) -> bool:
    if not base <= start < end <= base + len(image) or (end - start) % ALT_INSTR.size:
        return False
    for e in parse_table(image, base, start, end):
        if (
            e.orig % 4
            or e.orig_len % 4
            or not e.orig_len
            or not base <= e.orig < base + len(image)
            or (e.callback and e.alt_len)
            or (not e.callback and e.alt_len != e.orig_len)
        ):
            return False
    return True


def _adrp_add_targets(image: bytes, base: int, start: int, count: int) -> list[int]:
    """Addresses formed by ``adrp Xd, page`` + ``add Xd, Xd, #lo12`` in ``count`` insns."""
    pages: dict[int, int] = {}
    found = []
    for i in range(count):
        pc = start + 4 * i
        insn = _word(image, base, pc)
        if insn is None:
            break
        rd = insn & 31
        if insn & 0x9F000000 == 0x90000000:  # ADRP
            imm = _sext(((insn >> 5) & 0x7FFFF) << 2 | (insn >> 29) & 3, 21)
            pages[rd] = (pc & ~0xFFF) + (imm << 12)
        elif insn & 0xFFC00000 == 0x91000000 and (insn >> 5) & 31 in pages:  # ADD #imm
            found.append(pages[(insn >> 5) & 31] + ((insn >> 10) & 0xFFF))
    return found


def _relocated(image: bytes, at: int) -> int | None:
    """The addend of the R_AARCH64_RELATIVE relocation for the word at ``at``, if any."""
    i = image.find(struct.pack("<QQ", at, R_AARCH64_RELATIVE))
    return None if i < 0 or i % 8 else int(struct.unpack_from("<Q", image, i + 16)[0])


def find_table(image: bytes, symbols: SymbolTable) -> tuple[int, int, str] | None:
    """(start, end, how it was found) of ``__alt_instructions``, or None."""
    base = image_base(image, symbols)
    if symbols.has("__alt_instructions") and symbols.has("__alt_instructions_end"):
        start = symbols.address("__alt_instructions")
        end = symbols.address("__alt_instructions_end")
        if _plausible(image, base, start, end):
            return start, end, "kallsyms"
    for name in _REGION_BUILDERS:
        if not symbols.has(name) or len(symbols.addresses(name)) != 1:
            continue
        for region in _adrp_add_targets(image, base, symbols.address(name), 64):
            begin, stop = _relocated(image, region), _relocated(image, region + 8)
            if begin is not None and stop is not None and _plausible(image, base, begin, stop):
                return begin, stop, f"{name}'s alt_region (relocations)"
    return None


def _branch_target(insn: int, pc: int) -> int | None:
    """Target of an immediate branch (B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ) at ``pc``."""
    if insn & 0x7C000000 == 0x14000000:  # B, BL: imm26
        return pc + _sext(insn & 0x3FFFFFF, 26) * 4
    if insn & 0xFF000010 == 0x54000000 or insn & 0x7E000000 == 0x34000000:  # imm19
        return pc + _sext((insn >> 5) & 0x7FFFF, 19) * 4
    if insn & 0x7E000000 == 0x36000000:  # TBZ, TBNZ: imm14
        return pc + _sext((insn >> 5) & 0x3FFF, 14) * 4
    return None


def _retarget(insn: int, src: int, dst: int) -> int | None:
    """``insn`` moved from ``src`` to ``dst`` keeping its target, as get_alt_insn() does for
    immediate branches and ``adrp`` (alternative.c); other PC-relative forms -> None."""
    target = _branch_target(insn, src)
    if target is not None:
        delta = (target - dst) // 4
        if insn & 0x7C000000 == 0x14000000:
            return (insn & ~0x3FFFFFF) | delta & 0x3FFFFFF
        if insn & 0x7E000000 == 0x36000000:
            return (insn & ~(0x3FFF << 5)) | (delta & 0x3FFF) << 5
        return (insn & ~(0x7FFFF << 5)) | (delta & 0x7FFFF) << 5
    if insn & 0x9F000000 == 0x90000000:  # ADRP
        imm = _sext(((insn >> 5) & 0x7FFFF) << 2 | (insn >> 29) & 3, 21)
        page = (src & ~0xFFF) + (imm << 12)
        new = ((page - (dst & ~0xFFF)) >> 12) & 0x1FFFFF
        return (insn & 0x9F00001F) | (new & 3) << 29 | (new >> 2) << 5
    if insn & 0x1F000000 == 0x10000000 or insn & 0x3B000000 == 0x18000000:  # ADR, LDR lit
        return None
    return insn


class RunningText:
    """Instructions as the kernel runs them (see the module docstring)."""

    def __init__(
        self,
        image: bytes,
        base: int,
        entries: Iterable[AltEntry] = (),
        caps: CpuCaps | None = None,
        nop_callbacks: Iterable[int] = (),
        table: str = "none",
    ) -> None:
        self._image = image
        self._base = base
        self._caps = caps or CpuCaps()
        self._nops = frozenset(nop_callbacks)
        #: How the table was found ("kallsyms", ...), or "none".
        self.table = table
        self._by_addr: dict[int, AltEntry | None] = {}  # None: several entries overlap
        for e in entries:
            for addr in range(e.orig, e.orig + e.orig_len, 4):
                self._by_addr[addr] = None if addr in self._by_addr else e

    def __len__(self) -> int:
        """Instruction addresses some entry may patch."""
        return len(self._by_addr)

    def image_word(self, addr: int) -> int | None:
        """The instruction as linked (in the Image file), None outside it."""
        return _word(self._image, self._base, addr)

    def _replacement(self, e: AltEntry, addr: int) -> int | None:
        if e.callback:
            return NOP if e.repl in self._nops else None
        src = e.repl + (addr - e.orig)
        insn = self.image_word(src)
        if insn is None:
            return None
        target = _branch_target(insn, src)
        if target is not None and e.repl <= target < e.repl + e.alt_len:
            return insn  # a branch inside the replacement is copied as is (get_alt_insn)
        return _retarget(insn, src, addr)

    def candidates(self, addr: int) -> tuple[int, ...]:
        """Every instruction that can run at ``addr``: one when known, two when it depends
        on a cpucap this probe set does not decide, none when boot code computes it."""
        original = self.image_word(addr)
        if addr not in self._by_addr:
            return () if original is None else (original,)
        e = self._by_addr[addr]
        if e is None or original is None:
            return ()
        if e.cpucap in self._caps.absent:
            return (original,)
        new = self._replacement(e, addr)
        if e.cpucap in self._caps.applied:
            return () if new is None else (new,)
        if new is None:
            return ()
        return (original,) if new == original else (original, new)

    def instruction(self, addr: int) -> int | None:
        """The one instruction that runs at ``addr``, None when that is not known here."""
        found = self.candidates(addr)
        return found[0] if len(found) == 1 else None

    def describe(self, addr: int) -> str:
        """Why ``addr`` is not a single known instruction (for error messages)."""
        e = self._by_addr.get(addr)
        if addr not in self._by_addr:
            return "not patched"
        if e is None:
            return "patched by overlapping alternatives"
        what = "a boot-time callback" if e.callback else "an alternative"
        return f"patched by {what} for cpucap {e.cpucap}"


def running_text(image: bytes, symbols: SymbolTable, caps: CpuCaps | None = None) -> RunningText:
    """The Image's text with its alternatives table (empty when none is found)."""
    base = image_base(image, symbols)
    found = find_table(image, symbols)
    if found is None:
        return RunningText(image, base, caps=caps)
    start, end, how = found
    nops = symbols.addresses(NOPS_CALLBACK) if symbols.has(NOPS_CALLBACK) else []
    return RunningText(image, base, parse_table(image, base, start, end), caps, nops, how)

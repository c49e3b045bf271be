"""Pointer arguments without a stop: find the first memory access based on a register.

The TCG plugin cannot read registers (QEMU 7.2's plugin API), but it can report the
virtual address each instrumented load or store touches. If a function's straight-line
prologue dereferences its pointer argument (or a copy of it) at a known offset, that
access's address minus the offset is the argument's value. This module finds such an
access by decoding the A64 instructions from the function entry (pure); the recorder asks
the plugin to report it (``TKM`` lines), and ``record --read-values`` checks the result
against a debugger read.

Only what compilers emit in a prologue is modelled: ``mov Xd, Xn``, ``add Xd, Xn, #imm``,
loads/stores with an immediate offset, hints (``paciasp``, ``bti``, ``nop``). Any other
instruction that writes a tracked register stops tracking it; a branch ends the search
(code after it might not run). Instructions are read as the kernel runs them, after its
boot-time alternatives patching (tracekit/kernel/alternatives.py): 6.12's functions that
test a final cpucap begin with a ``b`` that boot turns into a NOP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracekit.errors import SymbolError

__all__ = ["InsnReader", "PointerSite", "find_frame_site", "find_pointer_site"]

#: Instructions scanned from the entry before giving up.
SCAN_INSNS = 32
_SP = 31


@dataclass(frozen=True)
class PointerSite:
    """The access at ``pc`` touches ``register value at entry + offset``."""

    pc: int
    offset: int


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _is_branch(insn: int) -> bool:
    return (
        (insn & 0x7C000000) == 0x14000000  # B, BL
        or (insn & 0xFE000000) == 0xD6000000  # BR, BLR, RET, ERET (unconditional register)
        or (insn & 0xFF000010) == 0x54000000  # B.cond
        or (insn & 0x7E000000) == 0x34000000  # CBZ, CBNZ
        or (insn & 0x7E000000) == 0x36000000  # TBZ, TBNZ
    )


@dataclass(frozen=True)
class _LoadStore:
    base: int
    #: Address minus the base register's value before the instruction.
    offset: int
    store: bool
    #: Registers written by a load (Rt, and Rt2 of a pair).
    loaded: tuple[int, ...]
    #: The base register is updated (pre/post-index).
    writeback: bool


def _load_store(insn: int) -> _LoadStore | None:
    """Decode the general-register load/store forms with an immediate (Arm ARM C4.1.4)."""
    rn, rt = (insn >> 5) & 31, insn & 31
    if (insn & 0x3F000000) == 0x39000000:  # LDR/STR (immediate, unsigned offset)
        opc = (insn >> 22) & 3
        return _LoadStore(rn, ((insn >> 10) & 0xFFF) << (insn >> 30), opc == 0, (rt,), False)
    if (insn & 0x3F200000) == 0x38000000:  # LDUR/STUR, pre/post-index, LDTR/STTR (imm9)
        opc, idx = (insn >> 22) & 3, (insn >> 10) & 3
        imm = _sext((insn >> 12) & 0x1FF, 9)
        return _LoadStore(rn, 0 if idx == 1 else imm, opc == 0, (rt,), idx in (1, 3))
    if (insn & 0x3C000000) == 0x28000000:  # LDP/STP (and LDPSW, LDNP/STNP)
        kind, load = (insn >> 23) & 7, bool(insn & (1 << 22))
        scale = 3 if insn >> 31 else 2
        imm = _sext((insn >> 15) & 0x7F, 7) << scale
        regs = (rt, (insn >> 10) & 31)
        return _LoadStore(rn, 0 if kind == 1 else imm, not load, regs, kind in (1, 3))
    return None


def _is_load_store(insn: int) -> bool:
    return (insn & 0x0A000000) == 0x08000000


#: ``read_insn(address)``: every instruction that can run there as the kernel runs
#: (tracekit.kernel.alternatives.RunningText.candidates): one, two where boot patching
#: depends on a CPU feature, none where boot code computes it.
InsnReader = Callable[[int], tuple[int, ...]]


def _after(insn: int, tracked: dict[int, int]) -> dict[int, int]:
    """What ``tracked`` (register -> offset from the pointer) is after ``insn``, which is
    not a branch, a hint, or an access based on a tracked register."""
    if _is_hint(insn):
        return tracked
    tracked = dict(tracked)
    rd = insn & 31
    if (insn & 0xFFE0FFE0) == 0xAA0003E0:  # MOV Xd, Xm (ORR Xd, XZR, Xm)
        rm = (insn >> 16) & 31
        if rm in tracked:
            tracked[rd] = tracked[rm]
        else:
            tracked.pop(rd, None)
        return tracked
    if (insn & 0xFF800000) == 0x91000000:  # ADD Xd, Xn, #imm{, LSL #12}
        rn = (insn >> 5) & 31
        imm = ((insn >> 10) & 0xFFF) << (12 if insn & (1 << 22) else 0)
        if rn in tracked and _SP not in (rn, rd):
            tracked[rd] = tracked[rn] + imm
        else:
            tracked.pop(rd, None)
        return tracked
    access = _load_store(insn)
    if access is not None:
        for reg in access.loaded if not access.store else ():
            tracked.pop(reg, None)
        if access.writeback:
            tracked.pop(access.base, None)
        return tracked
    if _is_load_store(insn):  # a form not decoded above: forget what it may write
        tracked.pop(rd, None)
        tracked.pop((insn >> 10) & 31, None)
        tracked.pop((insn >> 5) & 31, None)
        return tracked
    tracked.pop(rd, None)
    return tracked


def _is_hint(insn: int) -> bool:
    return (insn & 0xFFFFF01F) == 0xD503201F  # HINT: nop, paciasp, bti, ...


def find_pointer_site(read_insn: InsnReader, entry: int, register: int, what: str) -> PointerSite:
    """Follow ``x<register>`` from ``entry`` to its first dereference.

    Where boot patching leaves two possible instructions, the access must be the same in
    both and a register stays tracked only if both keep it; an instruction computed at
    boot, like a branch, ends the search. Raises SymbolError (naming ``what``) when the
    prologue has no such access before that.
    """
    tracked: dict[int, int] = {register: 0}  # register -> offset from the pointer
    for i in range(SCAN_INSNS):
        pc = entry + 4 * i
        options = read_insn(pc)
        if not options or any(_is_branch(insn) for insn in options):
            break
        if all(_is_hint(insn) for insn in options):
            continue
        accesses = [_load_store(insn) for insn in options]
        through = [a for a in accesses if a is not None and a.base in tracked and a.base != _SP]
        if through:
            if len(options) > 1:
                break  # whether (and where) it accesses depends on the CPU
            return PointerSite(pc, tracked[through[0].base] + through[0].offset)
        results = [_after(insn, tracked) for insn in options]
        tracked = {r: off for r, off in results[0].items() if all(x.get(r) == off for x in results)}
        if not tracked:
            break
    raise SymbolError(
        f"{what}: no memory access based on x{register} in the first instructions",
        hint="the kernel build differs; read the value with a stop instead (mode = 'stop')",
    )


_FP, _LR = 29, 30


def find_frame_site(read_insn: InsnReader, entry: int, what: str) -> PointerSite:
    """The prologue's store of its frame record: ``stp x29, x30, [sp, #imm]`` (pre-index
    or signed offset, AAPCS64 6.4.6). The address it writes *is* the function's frame
    record, the ``x29`` its callees see: a callee's frame chain names this activation.

    The site's offset is 0: the value recovered is the accessed address itself. Raises
    SymbolError (naming ``what``) when no such store comes before a branch (or an
    instruction boot patching leaves undecided: the store must be certain).
    """
    for i in range(SCAN_INSNS):
        pc = entry + 4 * i
        options = read_insn(pc)
        if len(options) != 1 or _is_branch(options[0]):
            break
        insn = options[0]
        access = _load_store(insn)
        if (
            access is not None
            and access.store
            and access.base == _SP
            and access.loaded == (_FP, _LR)
            and insn >> 30 == 2  # 64-bit registers
            and ((insn >> 23) & 7) in (2, 3)  # signed offset, pre-index
        ):
            return PointerSite(pc, 0)
    raise SymbolError(
        f"{what}: no frame record store (stp x29, x30, [sp, ...]) in the first instructions",
        hint="the function may be a leaf without a frame; drop `frame = true` for it",
    )

"""Capture expressions: parsed once into an :class:`Access`, rendered for GDB (pure);
probes/program.py hands the same parse to the timebase plugin.

Grammar (configs/probes/*.toml)::

    capture := REG | TYPE "[" addr "]"
    addr    := base ("+" (MEMBER | NUMBER))?
    base    := REG | "[" addr "]"          # a pointer loaded from memory
    REG     := x0..x30 | w0..w30 | cpsr | pc | sp
    TYPE    := u8 | u16 | u32 | u64 | s32
    MEMBER  := struct.member[.member...]    # resolved through the kernel's BTF
    NUMBER  := decimal or 0x-hex byte offset  # layouts the ABI fixes, e.g. a frame record

``u32 [[x1 + vgic_irq.target_vcpu] + kvm_vcpu.vcpu_idx]`` becomes
``*(unsigned int *)(*(unsigned long *)($x1 + 48) + 40)`` for the Debian 6.1 build.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tracekit.errors import ConfigError

__all__ = ["SIZES", "TYPES", "Access", "members_of", "parse_capture", "to_gdb"]

TYPES = {
    "u8": "unsigned char",
    "u16": "unsigned short",
    "u32": "unsigned int",
    "u64": "unsigned long",
    "s32": "int",
}
#: Bytes read by each capture TYPE; signed types are sign-extended (as GDB's cast does).
SIZES: Mapping[str, tuple[int, bool]] = {
    "u8": (1, False),
    "u16": (2, False),
    "u32": (4, False),
    "u64": (8, False),
    "s32": (4, True),
}
_REG = re.compile(r"^(?:[xw](?:[12]?\d|30)|cpsr|pc|sp)$")
_MEMBER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*(?:\[\d+\])?)+")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


@dataclass(frozen=True)
class Access:
    """What a capture reads: start from register ``reg``, for each of ``loads`` add it
    and load 8 bytes there, finally add ``offset`` and read ``size`` bytes (0: the value
    itself), sign-extended when ``signed``."""

    reg: str
    loads: tuple[int, ...] = ()
    offset: int = 0
    size: int = 0
    signed: bool = False

    def to_gdb(self) -> str:
        # GDB names the 32-bit views w0..w30 only with the full feature set; mask x instead.
        value = f"($x{self.reg[1:]} & 0xffffffff)" if self.reg.startswith("w") else f"${self.reg}"
        for off in self.loads:
            value = f"*(unsigned long *)({_plus(value, off)})"
        if self.size == 0:
            return value
        type_name = next(
            t for t, (size, signed) in SIZES.items() if (size, signed) == (self.size, self.signed)
        )
        return f"*({TYPES[type_name]} *)({_plus(value, self.offset)})"


def _plus(value: str, offset: int) -> str:
    return f"{value} + {offset}" if offset else value


def _address(
    text: str, offset_of: Callable[[str], int], where: str
) -> tuple[str, tuple[int, ...], int]:
    """(base register, loads, offset) of ``base (+ MEMBER|NUMBER)?``."""
    text = text.strip()
    if text.startswith("["):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "["
            depth -= ch == "]"
            if depth == 0:
                inner, rest = text[1:i], text[i + 1 :].strip()
                break
        else:
            raise ConfigError(f"{where}: unbalanced brackets in {text!r}")
        reg, loads, off = _address(inner, offset_of, where)
        loads = (*loads, off)  # the inner address is loaded from
    else:
        reg, _, rest = text.partition("+")
        reg = reg.strip()
        rest = ("+" + rest) if rest else ""
        if not _REG.match(reg):
            raise ConfigError(
                f"{where}: {reg!r} is not a register",
                hint="use x0..x30 or a bracketed pointer load",
            )
        loads = ()
    rest = rest.strip()
    if not rest:
        return reg, loads, 0
    if not rest.startswith("+"):
        raise ConfigError(f"{where}: expected '+ struct.member' after the base, got {rest!r}")
    member = rest[1:].strip()
    if _NUMBER.fullmatch(member):
        # A fixed ABI layout (AAPCS64 frame record: [fp] = caller's fp, [fp + 8] = lr).
        return reg, loads, int(member, 0)
    if not _MEMBER.fullmatch(member):
        raise ConfigError(f"{where}: {member!r} is not struct.member or a byte offset")
    return reg, loads, offset_of(member)


def parse_capture(expr: str, offset_of: Callable[[str], int], where: str = "capture") -> Access:
    """Parse one capture expression; ``offset_of`` maps struct.member to a byte offset."""
    text = expr.strip()
    if _REG.match(text):
        return Access(text)
    type_name, _, rest = text.partition(" ")
    if type_name not in TYPES:
        raise ConfigError(
            f"{where}: {expr!r} should be a register or TYPE [ADDR]",
            hint=f"TYPE is one of {', '.join(TYPES)}",
        )
    rest = rest.strip()
    if not (rest.startswith("[") and rest.endswith("]")):
        raise ConfigError(f"{where}: the address in {expr!r} must be in brackets")
    reg, loads, offset = _address(rest[1:-1], offset_of, where)
    size, signed = SIZES[type_name]
    return Access(reg, loads, offset, size, signed)


def to_gdb(expr: str, offset_of: Callable[[str], int], where: str = "capture") -> str:
    """Translate one capture expression; ``offset_of`` maps struct.member to a byte offset."""
    return parse_capture(expr, offset_of, where).to_gdb()


def members_of(expr: str) -> list[str]:
    """The struct.member paths an expression needs (for BTF extraction)."""
    return _MEMBER.findall(expr.split(" ", 1)[1]) if " " in expr.strip() else []

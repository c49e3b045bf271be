"""Capture expressions -> GDB expressions (pure).

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
from collections.abc import Callable

from tracekit.errors import ConfigError

__all__ = ["TYPES", "members_of", "to_gdb"]

TYPES = {
    "u8": "unsigned char",
    "u16": "unsigned short",
    "u32": "unsigned int",
    "u64": "unsigned long",
    "s32": "int",
}
_REG = re.compile(r"^(?:[xw](?:[12]?\d|30)|cpsr|pc|sp)$")
_MEMBER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*(?:\[\d+\])?)+")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


def _reg(name: str) -> str:
    # GDB names the 32-bit views w0..w30 only with the full feature set; mask x instead.
    if name.startswith("w"):
        return f"($x{name[1:]} & 0xffffffff)"
    return f"${name}"


def _addr(text: str, offset_of: Callable[[str], int], where: str) -> str:
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
        base = f"*(unsigned long *)({_addr(inner, offset_of, where)})"
    else:
        base_name, _, rest = text.partition("+")
        base_name = base_name.strip()
        rest = ("+" + rest) if rest else ""
        if not _REG.match(base_name):
            raise ConfigError(
                f"{where}: {base_name!r} is not a register",
                hint="use x0..x30 or a bracketed pointer load",
            )
        base = _reg(base_name)
    rest = rest.strip()
    if not rest:
        return base
    if not rest.startswith("+"):
        raise ConfigError(f"{where}: expected '+ struct.member' after the base, got {rest!r}")
    member = rest[1:].strip()
    if _NUMBER.fullmatch(member):
        # A fixed ABI layout (AAPCS64 frame record: [fp] = caller's fp, [fp + 8] = lr).
        return f"{base} + {int(member, 0)}"
    if not _MEMBER.fullmatch(member):
        raise ConfigError(f"{where}: {member!r} is not struct.member or a byte offset")
    return f"{base} + {offset_of(member)}"


def to_gdb(expr: str, offset_of: Callable[[str], int], where: str = "capture") -> str:
    """Translate one capture expression; ``offset_of`` maps struct.member to a byte offset."""
    text = expr.strip()
    if _REG.match(text):
        return _reg(text)
    type_name, _, rest = text.partition(" ")
    if type_name not in TYPES:
        raise ConfigError(
            f"{where}: {expr!r} should be a register or TYPE [ADDR]",
            hint=f"TYPE is one of {', '.join(TYPES)}",
        )
    rest = rest.strip()
    if not (rest.startswith("[") and rest.endswith("]")):
        raise ConfigError(f"{where}: the address in {expr!r} must be in brackets")
    return f"*({TYPES[type_name]} *)({_addr(rest[1:-1], offset_of, where)})"


def members_of(expr: str) -> list[str]:
    """The struct.member paths an expression needs (for BTF extraction)."""
    return _MEMBER.findall(expr.split(" ", 1)[1]) if " " in expr.strip() else []

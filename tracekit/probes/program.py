"""Capture expressions -> programs the timebase plugin runs without a debugger (pure).

On QEMU >= 9.2 (plugin API 4) tk_timebase.c reads registers and guest memory itself
(``qemu_plugin_read_register``, ``qemu_plugin_read_memory_vaddr``), so a capture need not
stop the VM. The plugin does not parse expressions: every capture (grammar in
capture.py) is compiled here into a straight-line program

    start from register REG (``w`` names: the x register masked to 32 bits),
    for each load: add its offset, read 8 bytes there (the new value),
    finally add OFFSET and read SIZE bytes there (SIZE 0: keep the value itself)

and handed to the plugin as one probe-file line per capture::

    c <pc-hex> <name> <reg> <n-loads> <load-off>... <offset> <size>

``<size>`` is 0, 1, 2, 4 or 8, or -4 for ``s32`` (the plugin sign-extends to 64 bits).
The plugin's value is then exactly GDB's ``(unsigned long)(EXPR)`` for the expression
capture.to_gdb gives the same capture (the recorder casts every value so:
gdb/mi.py read_and_resume); :meth:`CaptureProgram.to_gdb` renders that expression back
(the unit goldens check both translations agree on every shipped capture).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tracekit.errors import ConfigError
from tracekit.probes.capture import Access, parse_capture

__all__ = ["CaptureProgram", "compile_capture", "world_programs"]

_NAME = re.compile(r"^[A-Za-z_@][\w.]*$")
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class CaptureProgram:
    """One capture as the plugin runs it."""

    name: str
    #: A register as QEMU's gdbstub names it (x0..x30, sp, cpsr, or a system register
    #: such as HCR_EL2), ``w0``..``w30`` (the x register's low 32 bits), or ``pc`` (the
    #: probed instruction's own address).
    reg: str
    #: Offsets of the pointer loads, innermost first: value = [value + off] (8 bytes).
    loads: tuple[int, ...] = ()
    #: Added after the loads; the final read is at value + offset.
    offset: int = 0
    #: Bytes of the final read (1, 2, 4, 8); 0: the value itself, no final read.
    size: int = 0
    #: Sign-extend the final read to 64 bits (``s32``).
    signed: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"capture name {self.name!r} cannot go into the plugin's file")
        if self.size not in (0, 1, 2, 4, 8) or (self.size == 0 and (self.offset or self.signed)):
            raise ConfigError(f"capture {self.name}: bad final read ({self.size} bytes)")

    def line(self, pc: int) -> str:
        """The plugin's probe-file line for this capture at ``pc`` (module docstring)."""
        size = -self.size if self.signed else self.size
        loads = "".join(f" {off}" for off in self.loads)
        return f"c {pc:x} {self.name} {self.reg} {len(self.loads)}{loads} {self.offset} {size}\n"

    def to_gdb(self) -> str:
        """The GDB expression that reads the same value (capture.to_gdb's form)."""
        return Access(self.reg, self.loads, self.offset, self.size, self.signed).to_gdb()

    def evaluate(
        self, registers: Mapping[str, int], read: Callable[[int, int], int | None], pc: int = 0
    ) -> int | None:
        """What the plugin computes (the reference its C code follows), with ``read(address,
        size)`` the little-endian memory read (None: unmapped). None: unreadable."""
        if self.reg == "pc":
            value = pc
        elif self.reg.startswith("w"):
            value = registers["x" + self.reg[1:]] & 0xFFFFFFFF
        else:
            value = registers[self.reg]
        for off in self.loads:
            loaded = read((value + off) & _MASK64, 8)
            if loaded is None:
                return None
            value = loaded
        if self.size == 0:
            return value
        final = read((value + self.offset) & _MASK64, self.size)
        if final is None:
            return None
        if self.signed and final >> (8 * self.size - 1):
            final -= 1 << (8 * self.size)
        return final & _MASK64


def compile_capture(
    name: str, expr: str, offset_of: Callable[[str], int], where: str = "capture"
) -> CaptureProgram:
    """Compile one capture expression (capture.py's grammar and parse); ``offset_of`` maps
    struct.member to a byte offset, as for capture.to_gdb."""
    a = parse_capture(expr, offset_of, where)
    return CaptureProgram(name, a.reg, a.loads, a.offset, a.size, a.signed)


def world_programs(kvm_mode: str) -> tuple[CaptureProgram, ...]:
    """What tells host from guest at a plugin-read probe (record/world.py): CPSR (its
    exception level) and, for nVHE, HCR_EL2 (stage 2 on: the L2 guest). Named ``@cpsr``
    and ``@hcr`` so they cannot clash with a capture's name."""
    programs = (CaptureProgram("@cpsr", "cpsr"),)
    return programs if kvm_mode == "vhe" else (*programs, CaptureProgram("@hcr", "HCR_EL2"))

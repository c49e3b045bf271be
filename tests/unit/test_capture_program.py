"""Capture expressions compiled for the plugin (probes/program.py): goldens against the
GDB expression the same capture gives (probes/capture.py), and the programs' meaning."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from tracekit.errors import ConfigError
from tracekit.probes.capture import to_gdb
from tracekit.probes.program import CaptureProgram, compile_capture, world_programs
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent.parent / "data" / "golden" / "capture-programs.txt"
SETS = ("linux-6.1", "linux-6.12")


def offsets(member: str) -> int:
    """A fixed, made-up layout (the goldens must not depend on a kernel build)."""
    return zlib.crc32(member.encode()) % 512


def shipped() -> list[tuple[str, str, str, str]]:
    """(probe set, probe, capture name, expression) of every shipped capture."""
    return [
        (set_name, spec.name, name, expr)
        for set_name in SETS
        for spec in load_probe_set(set_name).probes
        for name, expr in spec.capture.items()
    ]


def golden_text() -> str:
    """Per capture: the expression, the plugin's line (at pc 0x1000), GDB's expression."""
    out = []
    for set_name, probe, name, expr in shipped():
        program = compile_capture(name, expr, offsets)
        out.append(f"{set_name} {probe}.{name} = {expr}\n  {program.line(0x1000)}")
        out.append(f"  {to_gdb(expr, offsets)}\n")
    return "".join(out)


def test_every_shipped_capture_gives_gdbs_expression() -> None:
    for _, probe, name, expr in shipped():
        assert compile_capture(name, expr, offsets).to_gdb() == to_gdb(expr, offsets), probe


def test_programs_golden() -> None:
    # Regenerate: .venv/bin/python tests/golden.py (review the diff).
    assert golden_text() == GOLDEN.read_text()


def test_lines() -> None:
    p = compile_capture("t", "u32 [[x1 + vgic_irq.target_vcpu] + kvm_vcpu.vcpu_idx]", _layout)
    assert p == CaptureProgram("t", "x1", (48,), 40, 4)
    assert p.line(0xFFFF8000) == "c ffff8000 t x1 1 48 40 4\n"
    assert compile_capture("r", "x30", _layout).line(0x10) == "c 10 r x30 0 0 0\n"
    assert compile_capture("e", "w1", _layout).line(0x10) == "c 10 e w1 0 0 0\n"
    assert compile_capture("f", "u64 [[[x29]]]", _layout).line(0x10) == "c 10 f x29 2 0 0 0 8\n"
    assert compile_capture("s", "s32 [sp + 0x10]", _layout).line(0x10) == "c 10 s sp 0 16 -4\n"
    assert [p.line(4) for p in world_programs("nvhe")] == [
        "c 4 @cpsr cpsr 0 0 0\n",
        "c 4 @hcr HCR_EL2 0 0 0\n",
    ]
    assert len(world_programs("vhe")) == 1


def _layout(member: str) -> int:
    return {"vgic_irq.target_vcpu": 48, "kvm_vcpu.vcpu_idx": 40}[member]


MEMORY = {
    0x1000 + 48: (0x2000).to_bytes(8, "little"),
    0x2000 + 40: (7).to_bytes(4, "little"),
    0x3000: (-2 & 0xFFFFFFFF).to_bytes(4, "little"),
}


def read(address: int, size: int) -> int | None:
    data = MEMORY.get(address)
    return int.from_bytes(data[:size], "little") if data is not None else None


def test_evaluate_follows_gdbs_unsigned_long_cast() -> None:
    regs = {"x1": 0x1000, "x2": 0xFFFF_FFFF_0000_3000, "sp": 0x3000}
    target = compile_capture("t", "u32 [[x1 + vgic_irq.target_vcpu] + kvm_vcpu.vcpu_idx]", _layout)
    assert target.evaluate(regs, read) == 7
    # (unsigned long)(int)-2: sign-extended to 64 bits, as GDB's cast does.
    assert compile_capture("s", "s32 [sp]", _layout).evaluate(regs, read) == 2**64 - 2
    assert compile_capture("u", "u32 [sp]", _layout).evaluate(regs, read) == 2**32 - 2
    assert compile_capture("w", "w2", _layout).evaluate(regs, read) == 0x3000
    assert compile_capture("p", "pc", _layout).evaluate(regs, read, pc=0x44) == 0x44
    # An unmapped address anywhere on the way: unreadable, never 0.
    assert compile_capture("x", "u32 [[x2 + 8] + 0]", _layout).evaluate(regs, read) is None
    assert compile_capture("y", "u64 [x1]", _layout).evaluate(regs, read) is None


@pytest.mark.parametrize(
    "bad", ["u128 [x1]", "u32 x1", "u32 [q7 + a.b]", "u32 [[x1 + a.b]", "u32 [x1 - vgic_irq.intid]"]
)
def test_bad_expressions_are_refused_like_gdbs(bad: str) -> None:
    with pytest.raises(ConfigError):
        compile_capture("v", bad, offsets)
    with pytest.raises(ConfigError):
        to_gdb(bad, offsets)


def test_names_that_would_break_the_file_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot go into"):
        CaptureProgram("a b", "x1")

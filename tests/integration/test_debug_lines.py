"""Source lines for explain: GDB's answer (the product) against binutils' addr2line (an
independent DWARF reader) on the kernel's own debug info, one probe per phase."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tracekit.guest.debuginfo import LINES, VMLINUX, relative_source

pytestmark = pytest.mark.integration

#: One probe location per phase and the file its function is defined in.
EXPECTED = {
    "A": ("vgic_queue_irq_unlock", "arch/arm64/kvm/vgic/vgic.c"),
    "B": ("__guest_exit", "arch/arm64/kvm/hyp/entry.S"),
    "C": ("kvm_arch_vcpu_ioctl_run+", "arch/arm64/kvm/arm.c"),
    "D": ("handle_exit", "arch/arm64/kvm/handle_exit.c"),
    "E": ("kvm_vgic_flush_hwstate", "arch/arm64/kvm/vgic/vgic.c"),
    "F": ("__guest_enter+", "arch/arm64/kvm/hyp/entry.S"),
}


@pytest.fixture(scope="module")
def lines(guest_assets: Any) -> dict[str, Any]:
    kdir = guest_assets.image_path.parent
    path = kdir / LINES
    assert path.exists(), "no debug lines cached: `make test` runs `guest build --debug-info`"
    data: dict[str, Any] = json.loads(path.read_text())
    data["vmlinux"] = kdir / VMLINUX
    return data


@pytest.mark.parametrize("phase", sorted(EXPECTED))
def test_gdb_lines_match_addr2line(lines: dict[str, Any], tools: Any, phase: str) -> None:
    prefix, expected_file = EXPECTED[phase]
    location = next(
        loc
        for loc in sorted(lines["lines"])
        if loc == prefix or (prefix.endswith("+") and loc.startswith(prefix))
    )
    file, line = lines["lines"][location].rsplit(":", 1)
    assert file == expected_file, (location, lines["lines"][location])
    # The second reader, at the address GDB says that line starts at (-f: the function,
    # -i: the inline chain, innermost first; the last entry is the function itself).
    addr = lines["line_starts"][location]
    out = subprocess.run(
        [tools.addr2line, "-e", str(lines["vmlinux"]), "-f", "-i", f"{addr:#x}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()  # fmt: skip
    function, where = out[-2], out[-1].split(" (discriminator")[0]
    theirs_file, theirs_line = where.rsplit(":", 1)
    assert relative_source(theirs_file) == file, (location, out)
    assert function == location.split("+")[0] or location.startswith("__guest"), (location, out)
    # Several line-table rows may share one address (the function's opening line, then
    # its first statement): addr2line reports the first row, GDB the last. Both lie in
    # the function, GDB's a few lines further in.
    assert 0 <= int(line) - int(theirs_line) <= 20, (location, line, out)


def test_most_probe_points_have_a_line(lines: dict[str, Any]) -> None:
    assert len(lines["lines"]) >= 0.9 * len(lines["asked"]) > 20


def test_lines_parser_is_strict() -> None:
    from tracekit.guest.debuginfo import MARK, lines_from_gdb

    out = (
        f"{MARK}handle_exit\n"
        'Line 268 of "arch/arm64/kvm/handle_exit.c" starts at address 0xffff800008064528'
        " <handle_exit+8> and ends at 0xffff80000806452c <handle_exit+12>.\n"
        f"{MARK}gone\nNo line number information available for address 0x0\n"
    )
    got, starts = lines_from_gdb(out)
    assert got == {"handle_exit": "arch/arm64/kvm/handle_exit.c:268"}
    assert starts == {"handle_exit": 0xFFFF800008064528}
    assert Path(
        relative_source("/build/x/arch/arm64/kvm/../../../virt/kvm/eventfd.c")
    ).as_posix() == ("virt/kvm/eventfd.c")

"""Source lines for the probed kernel points, from Debian's ``-dbg`` package (on request).

The kernel Image has no line information; Debian ships it in
``linux-image-<release>-dbg`` (about 260 MB, 1.4 GB unpacked). ``guest build --debug-info``
downloads it once, streams only ``usr/lib/debug/boot/vmlinux-<release>`` out of it, and asks
GDB for the file:line of every probe location. The result is a small ``lines.json`` beside
the kernel; ``record`` embeds the lines in the trace and ``explain`` shows them. The
``vmlinux`` (about 270 MB) stays in the kernel's cache directory so the lines can be checked
against another DWARF reader.

Why GDB: it is the project's reference reader already, it loads the vmlinux's DWARF lazily
(about a second here), and ``info line FUNCTION`` skips a function's patchable-entry NOPs
(ftrace), which the line table files under whatever inlined helper the compiler was in,
to the function's own first line. binutils' ``addr2line`` is the second, independent
reader the tests check it against.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

from tracekit.config import ToolPaths
from tracekit.errors import EnvironmentProblem, GuestBuildError
from tracekit.guest.debian import PackageRef, PrivateApt

__all__ = [
    "LINES",
    "build_lines",
    "debug_vmlinux_member",
    "lines_from_gdb",
    "relative_source",
]

LINES = "lines.json"
#: Separates GDB's answers (one echo before each ``info line``).
MARK = "TK-LINE "
VMLINUX = "vmlinux.debug"
#: Top-level directories of the kernel tree: a DWARF path is made relative at the first.
_TREE = re.compile(
    r"(?:^|/)((?:arch|virt|kernel|mm|drivers|include|lib|fs|net|block|init|ipc|security|crypto)/.*)$"
)


def debug_vmlinux_member(release: str) -> str:
    return f"./usr/lib/debug/boot/vmlinux-{release}"


def relative_source(path: str) -> str:
    """``/build/linux-Xx/arch/arm64/kvm/../../../virt/kvm/eventfd.c`` -> ``virt/kvm/eventfd.c``."""
    norm = os.path.normpath(path)
    m = _TREE.search(norm)
    return m.group(1) if m else norm


_INFO_LINE = re.compile(
    r'^Line (\d+) of "([^"]+)"\s+(?:starts at address|is at address) (0x[0-9a-f]+)'
)


def lines_from_gdb(output: str) -> tuple[dict[str, str], dict[str, int]]:
    """Parse ``echo MARK<location>`` + ``info line ...`` pairs: location -> ``file:line``
    and the address GDB says that line starts at (``?`` when it has none)."""
    lines: dict[str, str] = {}
    starts: dict[str, int] = {}
    current = None
    for raw in output.splitlines():
        if raw.startswith(MARK):
            current = raw[len(MARK) :].strip()
        elif current and (m := _INFO_LINE.match(raw.strip())):
            lines[current] = f"{relative_source(m.group(2))}:{m.group(1)}"
            starts[current] = int(m.group(3), 16)
            current = None
    return lines, starts


def build_lines(
    apt: PrivateApt,
    kernel_dir: Path,
    package: str,
    version: str,
    release: str,
    locations: Mapping[str, int],
    tools: ToolPaths,
    *,
    force: bool = False,
    report: Callable[[str], None] = lambda _m: None,
) -> Path:
    """Write ``kernel_dir/lines.json``: probe location -> ``file:line`` (cached)."""
    target = kernel_dir / LINES
    vmlinux = kernel_dir / VMLINUX
    if not vmlinux.exists() or force:
        ref = apt.resolve(f"{package}-dbg")
        if ref.version != version:
            raise GuestBuildError(
                f"Debian has {ref.name} {ref.version}, the kernel is {version}",
                hint="`tracekit guest build --force` updates the kernel to the current build",
            )
        report(f"downloading {ref.spec} {ref.version} (about 260 MB, once)")
        deb = apt.download(PackageRef(ref.name, ref.architecture, ref.version), kernel_dir / "dbg")
        report("extracting vmlinux with its DWARF")
        _extract_member(deb, debug_vmlinux_member(release), vmlinux, tools)
        deb.unlink()
    cached = json.loads(target.read_text()) if target.exists() and not force else None
    if cached is not None and set(locations) <= set(cached.get("asked", [])):
        return target
    report(f"source lines of {len(locations)} probe points (GDB)")
    names = sorted(locations)
    argv = [tools.gdb, "-batch", "-nx", str(vmlinux)]
    for n in names:
        # A function's entry: its own first line; an interior point: the line of that PC.
        where = n if "+" not in n else f"*{locations[n]:#x}"
        argv += ["-ex", f"echo {MARK}{n}\\n", "-ex", f"info line {where}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError:
        raise EnvironmentProblem(
            f"{tools.gdb} not found", hint="apt-get install gdb-multiarch"
        ) from None
    if proc.returncode != 0:
        raise GuestBuildError(f"GDB could not read {vmlinux}: {proc.stderr.strip()[:200]}")
    lines, starts = lines_from_gdb(proc.stdout)
    data = {"asked": names, "lines": lines, "line_starts": starts}
    target.write_text(json.dumps(data, indent=1, sort_keys=True))
    return target


def _extract_member(deb: Path, member: str, dest: Path, tools: ToolPaths) -> None:
    """Stream one file out of a .deb's data archive without unpacking the rest."""
    proc = subprocess.Popen(
        [tools.dpkg_deb, "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    found = False
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                if info.name == member:
                    src = tar.extractfile(info)
                    if src is None:
                        break
                    tmp = dest.with_suffix(".tmp")
                    with tmp.open("wb") as out:
                        while chunk := src.read(1 << 22):
                            out.write(chunk)
                    tmp.replace(dest)
                    found = True
                    break
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    if not found:
        raise GuestBuildError(
            f"{deb.name} has no {member}", hint="is it the kernel's -dbg package?"
        )


def load_lines(kernel_dir: Path) -> dict[str, str]:
    path = kernel_dir / LINES
    if not path.exists():
        return {}
    lines: dict[str, str] = json.loads(path.read_text()).get("lines", {})
    return lines

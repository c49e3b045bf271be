"""``tracekit doctor``: is every external piece here, and if not, what fixes it.

Each check runs a tool the way tracekit will run it and reports OK with a version, or the
exact command that fixes it. The checks do I/O (subprocess, filesystem); rendering them is
the CLI's job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tracekit.config import ToolPaths

__all__ = ["CheckResult", "run_checks", "sudo_prefix"]


@dataclass(frozen=True)
class CheckResult:
    """One row of the doctor table."""

    name: str
    ok: bool
    detail: str
    #: Command that fixes a failed check ("" when ok).
    fix: str = ""
    #: A required piece makes ``doctor`` fail; an optional one only warns.
    required: bool = True


def sudo_prefix() -> str:
    """``sudo `` when not root, so fix commands can be pasted as they are."""
    return "" if os.geteuid() == 0 else "sudo "


def _run(argv: list[str], timeout: float = 20) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


def _apt_fix(package: str) -> str:
    return f"{sudo_prefix()}apt-get install -y {package}"


def _which(tool: str) -> str | None:
    return (
        shutil.which(tool) if os.sep not in tool else (tool if os.access(tool, os.X_OK) else None)
    )


def check_qemu(tools: ToolPaths) -> CheckResult:
    if not _which(tools.qemu):
        return CheckResult(
            "QEMU (aarch64)", False, f"{tools.qemu} not found", _apt_fix("qemu-system-arm")
        )
    rc, out = _run([tools.qemu, "--version"])
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    version = m.group(1) if m else "unknown version"
    rc, props = _run([tools.qemu, "-machine", "virt,help"])
    missing = [p for p in ("virtualization", "gic-version") if p not in props]
    if rc != 0 or missing:
        return CheckResult(
            "QEMU (aarch64)",
            False,
            f"{version}: virt machine lacks {', '.join(missing) or 'help'}",
            _apt_fix("qemu-system-arm") + "  (QEMU >= 7.2 needed)",
        )
    from tracekit.errors import TracekitError
    from tracekit.vm.plugin import qemu_plugin_api

    try:
        api = qemu_plugin_api(tools.qemu)
    except TracekitError as exc:
        return CheckResult(
            "QEMU (aarch64)",
            False,
            f"{version}: {exc.message}",
            exc.hint or _apt_fix("qemu-system-arm"),
        )
    # API 1 (QEMU 7.2) timestamps probes; values are read at debugger stops. API 4 (9.2+)
    # reads registers and memory in the plugin itself: record's default there.
    from tracekit.record.resolve import PLUGIN_VALUES_API

    mode = (
        "record reads values in the plugin, no debugger stop (--no-plugin-values: at GDB stops)"
        if api >= PLUGIN_VALUES_API
        else "record reads values at GDB stops (plugin-read values need QEMU >= 9.2)"
    )
    return CheckResult(
        "QEMU (aarch64)",
        True,
        f"{version}; virt: virtualization=on, gic-version=3 supported; TCG plugin API {api}:"
        f" {mode}",
    )


def check_gdb(tools: ToolPaths) -> CheckResult:
    if not _which(tools.gdb):
        return CheckResult(
            "GDB (multiarch)", False, f"{tools.gdb} not found", _apt_fix("gdb-multiarch")
        )
    _, out = _run([tools.gdb, "--version"])
    m = re.search(r"GNU gdb .*? (\d+\.\d+)", out)
    version = m.group(1) if m else "unknown version"
    rc, arch = _run([tools.gdb, "--batch", "-nx", "-ex", "set architecture aarch64"])
    if rc != 0 or "Undefined" in arch:
        return CheckResult(
            "GDB (multiarch)",
            False,
            f"{version}: no aarch64 support ({arch.strip()[:60]})",
            _apt_fix("gdb-multiarch"),
        )
    return CheckResult("GDB (multiarch)", True, f"{version}; aarch64 supported")


def check_cross_gcc(tools: ToolPaths) -> CheckResult:
    if not _which(tools.cross_gcc):
        return CheckResult(
            "aarch64 cross compiler",
            False,
            f"{tools.cross_gcc} not found",
            _apt_fix("gcc-aarch64-linux-gnu libc6-dev-arm64-cross"),
        )
    rc, out = _run([tools.cross_gcc, "-print-file-name=libc.a"])
    libc = out.strip()
    if rc != 0 or not os.path.isabs(libc) or not os.path.exists(libc):
        return CheckResult(
            "aarch64 cross compiler",
            False,
            "no static libc for aarch64",
            _apt_fix("libc6-dev-arm64-cross"),
        )
    rc, ver = _run([tools.cross_gcc, "-dumpversion"])
    return CheckResult("aarch64 cross compiler", True, f"gcc {ver.strip()} with static libc")


def check_host_gcc(tools: ToolPaths) -> CheckResult:
    if not _which(tools.host_gcc):
        return CheckResult("host C compiler", False, f"{tools.host_gcc} not found", _apt_fix("gcc"))
    _rc, ver = _run([tools.host_gcc, "-dumpversion"])
    return CheckResult("host C compiler", True, f"gcc {ver.strip()} (builds the TCG plugin)")


def check_host(tools: ToolPaths, os_release: str | None = None) -> CheckResult:
    """The host's Debian release and the archive the guest packages are fetched from."""
    from tracekit.errors import GuestBuildError
    from tracekit.guest.debian import host_codename, host_mirrors

    text = os_release
    if text is None:
        try:
            text = Path("/etc/os-release").read_text()
        except OSError:
            text = ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', text, re.MULTILINE)
    pretty = m.group(1) if m else "unknown OS"
    codename = host_codename(text)
    if not _which(tools.apt_get) or not _which(tools.dpkg_deb):
        return CheckResult(
            "host (Debian)",
            False,
            f"{pretty}: apt-get/dpkg-deb not found",
            "run on Debian 12 (bookworm) or 13 (trixie)",
        )
    supported = codename in ("bookworm", "trixie")
    try:
        mirrors = host_mirrors(codename)
    except GuestBuildError as exc:
        return CheckResult("host (Debian)", False, f"{pretty}: {exc.message}", exc.hint or "")
    detail = f"{pretty}; guest packages from {mirrors.archive}"
    if not supported:
        return CheckResult(
            "host (Debian)",
            False,
            detail + " (tested on Debian 12 and 13 only)",
            "run on Debian 12 (bookworm) or 13 (trixie)",
            required=False,
        )
    return CheckResult("host (Debian)", True, detail)


def check_disk(path: Path, need_gb: float = 2.0) -> CheckResult:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gb = usage.free / 1e9
    ok = free_gb >= need_gb
    return CheckResult(
        "free disk",
        ok,
        f"{free_gb:.1f} GB free at {probe}",
        "" if ok else f"free at least {need_gb} GB under {probe} or set TRACEKIT_CACHE",
    )


def run_checks(
    tools: ToolPaths,
    cache: Path,
    extra: Mapping[str, Callable[[], CheckResult]] | None = None,
) -> list[CheckResult]:
    """Run every check, in the order a user would fix them."""
    results = [
        check_host(tools),
        check_qemu(tools),
        check_gdb(tools),
        check_cross_gcc(tools),
        check_host_gcc(tools),
    ]
    for fn in (extra or {}).values():
        results.append(fn())
    results.append(check_disk(cache))
    return results

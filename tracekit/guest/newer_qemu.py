"""A second, newer QEMU for the test suite's QEMU matrix, unpacked into the cache.

Debian 12 ships QEMU 7.2 (plugin API 1: the plugin cannot read registers), and the
Debian way to a newer QEMU there is bookworm-backports (10.0). The suite proves
``record --plugin-values`` on QEMU >= 9.2 (plugin API 4) on every host, so on a host
whose own QEMU is older, ``guest build --newer-qemu`` fetches ``qemu-system-arm``,
``qemu-system-common`` and ``qemu-system-data`` from ``<codename>-backports`` for the
host's architecture through a private apt state (the host's apt configuration is never
touched) and unpacks them under the cache. Nothing is installed system-wide; QEMU 7.2
stays the host's default. QEMU finds its data (keymaps, ROMs) and its modules relative
to its own binary (``get_relocated_path``, util/cutils.c), so an unpacked tree runs as
is. Its shared libraries are the host's: backports builds against the release's own.

On a host whose QEMU already speaks plugin API >= 4 (Debian 13: 10.0), nothing is
fetched: that QEMU is the newer one.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

from tracekit.config import ToolPaths, cache_dir
from tracekit.errors import GuestBuildError
from tracekit.guest import debian

__all__ = ["NEWER_QEMU_API", "PACKAGES", "cached_newer_qemu", "fetch_newer_qemu"]

#: The binary packages of the emulator itself (qemu-system-arm's hard dependencies that
#: come from the same source package; everything else is the host's own library set).
PACKAGES = ("qemu-system-arm", "qemu-system-common", "qemu-system-data")
#: The plugin API the newer QEMU must speak (``qemu_plugin_read_memory_vaddr``).
NEWER_QEMU_API = 4
_BINARY = Path("usr/bin/qemu-system-aarch64")


#: Debian's architecture names for the machines tracekit runs on (``uname -m``).
_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _host_architecture() -> str:
    machine = platform.machine()
    arch = _DEBIAN_ARCH.get(machine)
    if arch is None:
        raise GuestBuildError(
            f"no Debian architecture known for this {machine} host",
            hint=f"run on {' or '.join(_DEBIAN_ARCH)}, or pass TRACEKIT_QEMU10=PATH",
        )
    return arch


def _cached_manifest(cache: Path) -> dict[str, str] | None:
    """The manifest of the unpacked newer QEMU, if it names a binary that is there."""
    try:
        meta = json.loads((cache / "qemu" / "manifest.json").read_text())
        binary = Path(meta["binary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(k): str(v) for k, v in meta.items()} if binary.exists() else None


def cached_newer_qemu(cache: Path | None = None) -> Path | None:
    """The unpacked newer QEMU's binary, if ``guest build --newer-qemu`` cached one."""
    meta = _cached_manifest(cache or cache_dir())
    return Path(meta["binary"]) if meta is not None else None


def fetch_newer_qemu(
    tools: ToolPaths,
    host_api: int,
    *,
    force: bool = False,
    report: Callable[[str], None] = lambda _m: None,
    cache: Path | None = None,
) -> dict[str, str]:
    """Make a QEMU with plugin API >= 4 available; returns what was done (for the table).

    ``host_api`` is the plugin API of the host's own QEMU.
    """
    if host_api >= NEWER_QEMU_API:
        return {"version": "the host's own QEMU", "binary": tools.qemu}
    cache = cache or cache_dir()
    root = cache / "qemu"
    cached = _cached_manifest(cache)
    if cached is not None and not force:
        return cached
    suite = f"{debian.host_codename()}-backports"
    arch = _host_architecture()
    apt = debian.PrivateApt(
        cache / "apt" / f"{suite}-{arch}", suite, arch, debian.host_mirrors(), tools
    )
    refs = []
    for name in PACKAGES:
        report(f"newer QEMU: resolving {name} in Debian {suite}")
        refs.append(apt.resolve(name))
    version = refs[0].version
    dest = root / version.replace(":", "_")
    for ref in refs:
        report(f"newer QEMU: {ref.spec} {ref.version}")
        deb = apt.download(ref, root / "debs")
        apt.unpack(deb, dest)
    binary = dest / _BINARY
    proc = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise GuestBuildError(
            f"the unpacked QEMU {version} does not run: "
            f"{(proc.stderr or proc.stdout).strip()[-300:]}",
            hint="a library it needs is missing on this host; `apt-get install` it or use"
            " TRACEKIT_QEMU10=PATH",
        )
    meta = {"version": version, "binary": str(binary), "suite": suite}
    (root / "manifest.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta

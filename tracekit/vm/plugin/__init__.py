"""Build (once, cached by source hash and plugin API) the tk_timebase TCG plugin with the
host compiler, for the plugin API the QEMU in use speaks."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from tracekit.config import QemuPluginApis, ToolPaths, cache_dir, load_qemu_plugin_apis
from tracekit.errors import ConfigError, EnvironmentProblem

__all__ = [
    "PLUGIN_APIS",
    "PLUGIN_SOURCE",
    "ensure_plugin",
    "plugin_api_for_version",
    "qemu_plugin_api",
]

PLUGIN_SOURCE = Path(__file__).with_name("tk_timebase.c")
#: Plugin API versions tk_timebase.c compiles for (its TK_PLUGIN_API).
PLUGIN_APIS = (1, 4)

_VERSION = re.compile(r"QEMU emulator version ((\d+)\.(\d+)(?:\.\d+)?)")


def _release_key(release: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in release.split("."))


def plugin_api_for_version(version_output: str, apis: QemuPluginApis) -> int:
    """The plugin API of the QEMU whose ``--version`` printed ``version_output``
    (e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u16)" -> 1).

    :raises EnvironmentProblem: the QEMU release is not in ``apis``, or no version found.
    :raises ConfigError: the table maps the release to an API the plugin cannot build.
    """
    supported = ", ".join(sorted(apis.by_release, key=_release_key))
    m = _VERSION.search(version_output)
    if m is None:
        first = next(iter(version_output.strip().splitlines()), "")
        raise EnvironmentProblem(
            f"no QEMU version in {first[:100]!r} (supported: QEMU {supported})"
        )
    release = f"{m.group(2)}.{m.group(3)}"
    api = apis.api_for(release)
    if api is None:
        raise EnvironmentProblem(
            f"QEMU {m.group(1)} is not supported by the TCG plugin (supported: QEMU {supported})",
            hint="use one of those (TRACEKIT_QEMU=...) or map its release to a plugin API "
            "in configs/tools.toml [qemu_plugin_api]",
        )
    if api not in PLUGIN_APIS:
        raise ConfigError(
            f"configs/tools.toml maps QEMU {release} to plugin API {api}, "
            f"but tk_timebase.c builds only for {', '.join(map(str, PLUGIN_APIS))}"
        )
    return api


@functools.lru_cache(maxsize=16)
def _version_output(path: str, mtime_ns: int) -> str:
    """``QEMU --version`` of one binary; cached by path and modification time."""
    del mtime_ns  # part of the cache key only
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"cannot run {path} --version: {exc}") from None
    return proc.stdout if proc.stdout.strip() else proc.stderr


def qemu_plugin_api(qemu: str, apis: QemuPluginApis | None = None) -> int:
    """The TCG plugin API of the QEMU binary ``qemu`` (a path or a name on PATH), from its
    ``--version`` and ``apis`` (default: ``[qemu_plugin_api]`` of configs/tools.toml)."""
    path = shutil.which(qemu) if os.sep not in qemu else qemu
    if path is None or not os.access(path, os.X_OK):
        raise EnvironmentProblem(f"{qemu} not found", hint="apt-get install qemu-system-arm")
    resolved = os.path.realpath(path)
    version = _version_output(resolved, os.stat(resolved).st_mtime_ns)
    return plugin_api_for_version(version, apis or load_qemu_plugin_apis())


def ensure_plugin(tools: ToolPaths, api: int, cache: Path | None = None) -> Path:
    """The plugin built for plugin API ``api`` (see :func:`qemu_plugin_api`)."""
    if api not in PLUGIN_APIS:
        raise ConfigError(
            f"tk_timebase.c builds for plugin API {', '.join(map(str, PLUGIN_APIS))}, not {api}"
        )
    src = PLUGIN_SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:16]
    out = (cache or cache_dir()) / "plugin" / f"{digest}-api{api}" / "tk_timebase.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    argv = [
        tools.host_gcc,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fvisibility=hidden",
        f"-DTK_PLUGIN_API={api}",
        "-o",
        str(tmp),
        str(PLUGIN_SOURCE),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem(
            f"{tools.host_gcc} not found; it builds the TCG plugin", hint="apt-get install gcc"
        ) from None
    if proc.returncode != 0:
        raise EnvironmentProblem(
            "building the TCG timebase plugin failed: " + proc.stderr.strip().splitlines()[-1][:200]
        )
    tmp.replace(out)
    return out

"""Thin adapter over apt/dpkg: resolve, download and unpack Debian packages.

Only package registries are reachable, so every guest asset comes from a ``.deb``. The
kernel metapackage is resolved to its current ABI package at build time, never hard-coded.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tracekit.config import ToolPaths
from tracekit.errors import GuestBuildError

__all__ = ["PackageRef", "download", "resolve", "unpack"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageRef:
    """A concrete package: name, architecture and version."""

    name: str
    architecture: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.architecture}"


def _run(argv: list[str], *, cwd: Path | None = None, what: str) -> str:
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600
        )
    except FileNotFoundError:
        raise GuestBuildError(
            f"{what}: {argv[0]} not found",
            hint="run on Debian 12, or `tracekit doctor` for the fix",
        ) from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise GuestBuildError(
            f"{what} failed: {tail[0]}",
            hint="check `apt-get update` and `dpkg --add-architecture arm64`",
        )
    return proc.stdout


def _policy_candidate(name: str, arch: str) -> str | None:
    out = _run(["apt-cache", "policy", f"{name}:{arch}"], what=f"apt-cache policy {name}")
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def resolve(name: str, arch: str, *, follow_metapackage: bool = False) -> PackageRef:
    """Resolve ``name`` to its current version; for a metapackage, to the package it pulls.

    ``linux-image-cloud-arm64`` depends on exactly one ``linux-image-6.1.0-NN-cloud-arm64``;
    that dependency is the real image package.
    """
    if follow_metapackage:
        out = _run(["apt-cache", "depends", f"{name}:{arch}"], what=f"apt-cache depends {name}")
        m = re.search(r"Depends:\s*(linux-image-[\w.+-]+?)(?::\w+)?\s*$", out, re.MULTILINE)
        if not m:
            raise GuestBuildError(
                f"cannot resolve {name}:{arch} to a kernel image package",
                hint=f"`apt-get update` after `dpkg --add-architecture {arch}`",
            )
        name = m.group(1)
    version = _policy_candidate(name, arch)
    if version is None:
        raise GuestBuildError(
            f"package {name}:{arch} has no candidate version",
            hint=f"run `dpkg --add-architecture {arch} && apt-get update`",
        )
    return PackageRef(name, arch, version)


def download(ref: PackageRef, dest: Path, tools: ToolPaths) -> Path:
    """Download the ``.deb`` of ``ref`` into ``dest`` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        # apt drops privileges to _apt for downloads; a root-owned temp dir would make it
        # warn, so run the download as root explicitly.
        _run(
            [
                tools.apt_get,
                "-q",
                "-o",
                "APT::Sandbox::User=root",
                "download",
                f"{ref.name}:{ref.architecture}={ref.version}",
            ],
            cwd=Path(tmp),
            what=f"download of {ref.spec}",
        )
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise GuestBuildError(f"download of {ref.spec} produced {len(debs)} files")
        final = dest / debs[0].name
        debs[0].replace(final)
    return final


def unpack(deb: Path, dest: Path, tools: ToolPaths) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run([tools.dpkg_deb, "-x", str(deb), str(dest)], what=f"unpacking {deb.name}")
    return dest

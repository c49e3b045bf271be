"""Thin adapter over apt/dpkg: resolve, download and unpack the guest's Debian packages.

Only package registries are reachable, so every guest asset comes from a ``.deb``. The
guest's packages come from one pinned Debian suite (``configs/guest.toml``), whatever the
host runs: a Debian 13 host still gets the Debian 12 kernel family that a probe set exists
for. apt runs with a private state, cache and sources list under tracekit's cache, so the
host's apt configuration (its architectures, its lists) is never touched; only the mirror
address is taken from the host's own sources. The kernel metapackage is resolved to its
current ABI package at build time, never hard-coded.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tracekit.config import ToolPaths
from tracekit.errors import GuestBuildError

__all__ = ["AptSource", "PackageRef", "PrivateApt", "host_codename", "host_mirrors"]

log = logging.getLogger(__name__)

#: The keyring of Debian's archive keys; Debian 13's includes Debian 12's signing keys.
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Lists older than this are refreshed at the next build (a new kernel ABI appears).
LISTS_MAX_AGE_S = 7 * 24 * 3600


@dataclass(frozen=True)
class PackageRef:
    """A concrete package: name, architecture and version."""

    name: str
    architecture: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.architecture}"


@dataclass(frozen=True)
class AptSource:
    """The host's archive addresses: the main archive and (if configured) the security one."""

    archive: str
    security: str | None = None


def host_codename(os_release: str | None = None) -> str:
    """``VERSION_CODENAME`` of this host (bookworm, trixie, ...), "" if unknown."""
    text = os_release
    if text is None:
        try:
            text = Path("/etc/os-release").read_text()
        except OSError:
            return ""
    m = re.search(r"^VERSION_CODENAME=\"?([\w-]+)\"?$", text, re.MULTILINE)
    return m.group(1) if m else ""


def _source_entries(texts: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every ``deb`` entry in one-line ``.list`` and deb822 ``.sources`` texts."""
    entries: list[tuple[str, list[str]]] = []
    for name, text in texts:
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                entries += [(uri, suites) for uri in fields.get("uris", "").split()]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


def host_mirrors(
    codename: str | None = None, texts: Iterable[tuple[str, str]] | None = None
) -> AptSource:
    """The Debian archive this host's apt uses, read from its own sources.

    The archive is the URI that serves the host's own suite; the security archive the one
    that serves ``<codename>-security``. Raises GuestBuildError when neither is found.
    """
    code = host_codename() if codename is None else codename
    if texts is None:
        paths = [Path("/etc/apt/sources.list")]
        parts = Path("/etc/apt/sources.list.d")
        if parts.is_dir():
            paths += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
        texts = [(p.name, p.read_text(errors="replace")) for p in paths if p.is_file()]
    entries = _source_entries(texts)
    archive = next((uri for uri, suites in entries if code and code in suites), None)
    security = next((uri for uri, suites in entries if f"{code}-security" in suites), None)
    override = os.environ.get("TRACEKIT_DEBIAN_MIRROR")
    if override:
        archive = override
    if archive is None:
        raise GuestBuildError(
            f"no Debian archive for {code or 'this host'} in the host's apt sources",
            hint="run on Debian 12 or 13, or set TRACEKIT_DEBIAN_MIRROR to a Debian mirror URI",
        )
    return AptSource(archive.rstrip("/"), security.rstrip("/") if security else None)


def _run(argv: list[str], *, cwd: Path | None = None, what: str) -> str:
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600
        )
    except FileNotFoundError:
        raise GuestBuildError(
            f"{what}: {argv[0]} not found",
            hint="run on Debian 12 or 13, or `tracekit doctor` for the fix",
        ) from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise GuestBuildError(f"{what} failed: {tail[0]}", hint="check the network and retry")
    return proc.stdout


class PrivateApt:
    """apt for one suite and architecture, with its own lists under ``root``."""

    def __init__(
        self, root: Path, suite: str, architecture: str, source: AptSource, tools: ToolPaths
    ) -> None:
        self.root = root
        self.suite = suite
        self.architecture = architecture
        self.source = source
        self.tools = tools

    def _options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::State={r}/state",
            "-o", f"Dir::State::status={r}/status",
            "-o", f"Dir::Cache={r}/cache",
            "-o", f"Dir::Etc::SourceList={r}/sources.list",
            "-o", f"Dir::Etc::SourceParts={r}/empty",
            "-o", f"Dir::Etc::PreferencesParts={r}/empty",
            "-o", f"Dir::Etc::Preferences={r}/empty/none",
            "-o", f"APT::Architectures={self.architecture}",
            "-o", f"APT::Architecture={self.architecture}",
            # apt drops privileges to _apt for downloads; our root-owned directories
            # would make it warn or fail, so it stays root.
            "-o", "APT::Sandbox::User=root",
            "-q",
        ]  # fmt: skip

    def _sources_text(self) -> str:
        opts = f"[arch={self.architecture} signed-by={ARCHIVE_KEYRING}]"
        lines = [f"deb {opts} {self.source.archive} {self.suite} main"]
        if "-" not in self.suite:  # a release has -updates and -security; bookworm-backports not
            lines.append(f"deb {opts} {self.source.archive} {self.suite}-updates main")
            if self.source.security:
                lines.append(f"deb {opts} {self.source.security} {self.suite}-security main")
        return "\n".join(lines) + "\n"

    def _lists_fresh(self, sources: str) -> bool:
        stamp = self.root / "updated"
        listed = self.root / "sources.list"
        if not stamp.exists() or not listed.exists() or listed.read_text() != sources:
            return False
        return time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S

    def update(self, *, force: bool = False) -> None:
        """Fetch the suite's package lists unless fresh ones are there."""
        sources = self._sources_text()
        if not force and self._lists_fresh(sources):
            return
        for d in ("state/lists/partial", "cache/archives/partial", "empty"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        (self.root / "sources.list").write_text(sources)
        try:
            _run(
                [self.tools.apt_get, *self._options(), "update"],
                what=f"apt-get update for Debian {self.suite} ({self.architecture})",
            )
        except GuestBuildError:
            if (self.root / "updated").exists():
                log.warning(
                    "refreshing the %s package lists failed; using the old ones", self.suite
                )
                return
            raise
        (self.root / "updated").touch()

    def _cache(self, *args: str, what: str) -> str:
        return _run([self.tools.apt_cache, *self._options(), *args], what=what)

    def resolve(self, name: str, *, follow_metapackage: bool = False) -> PackageRef:
        """``name`` at its current version; for a metapackage, the package it pulls.

        ``linux-image-cloud-arm64`` depends on exactly one ``linux-image-6.1.0-NN-cloud-arm64``;
        that dependency is the real image package.
        """
        arch = self.architecture
        self.update()
        if follow_metapackage:
            out = self._cache("depends", f"{name}:{arch}", what=f"apt-cache depends {name}")
            m = re.search(r"Depends:\s*(linux-image-[\w.+-]+?)(?::\w+)?\s*$", out, re.MULTILINE)
            if not m:
                raise GuestBuildError(
                    f"cannot resolve {name}:{arch} in Debian {self.suite} to a kernel image",
                    hint="`tracekit guest build --force` refreshes the package lists",
                )
            name = m.group(1)
        out = self._cache("policy", f"{name}:{arch}", what=f"apt-cache policy {name}")
        m = re.search(r"Candidate:\s*(\S+)", out)
        if not m or m.group(1) == "(none)":
            raise GuestBuildError(
                f"package {name}:{arch} is not in Debian {self.suite}",
                hint="`tracekit guest build --force` refreshes the package lists",
            )
        return PackageRef(name, arch, m.group(1))

    def depends(self, name: str) -> list[str]:
        """Direct, real ``Depends`` of ``name``: the first real member of each alternative
        group (apt-cache marks a member followed by another with ``|``; a virtual package
        is shown as ``<name>``)."""
        out = self._cache(
            "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
            "--no-replaces", "--no-enhances", f"{name}:{self.architecture}",
            what=f"apt-cache depends {name}",
        )  # fmt: skip
        names: list[str] = []
        taken = False
        for line in out.splitlines():
            s = line.strip()
            alternative = s.startswith("|Depends:")
            if not (alternative or s.startswith("Depends:")):
                continue
            dep = s.split(":", 1)[1].strip().split(":")[0]
            if not taken and not dep.startswith("<"):
                names.append(dep)
                taken = True
            if not alternative:  # the group ends here
                taken = False
        return names

    def download(self, ref: PackageRef, dest: Path) -> Path:
        """Download the ``.deb`` of ``ref`` into ``dest`` and return its path."""
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            _run(
                [self.tools.apt_get, *self._options(), "download", f"{ref.spec}={ref.version}"],
                cwd=Path(tmp),
                what=f"download of {ref.spec}",
            )
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise GuestBuildError(f"download of {ref.spec} produced {len(debs)} files")
            final = dest / debs[0].name
            debs[0].replace(final)
        return final

    def unpack(self, deb: Path, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        _run([self.tools.dpkg_deb, "-x", str(deb), str(dest)], what=f"unpacking {deb.name}")
        return dest

"""Build and cache the built-in guest stack: L1 kernel + symbols + BTF layout, VMM, initramfs.

Everything comes from package registries and this repository; each piece is cached under
:func:`tracekit.config.cache_dir` keyed by its inputs (package version, source hash), so it
is rebuilt only when an input changes. ``assets.json`` in the cache names the current set.
The kernel's part (fetch, check, symbols, BTF layout) is :mod:`tracekit.guest.kernel`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tracekit.config import REPO_ROOT, GuestConfig, ToolPaths, cache_dir
from tracekit.env.doctor import CheckResult
from tracekit.errors import EnvironmentProblem, GuestBuildError
from tracekit.guest import initramfs
from tracekit.guest.kernel import (
    Report,
    build_extra_kernel,
    build_kernel,
    build_kernel_from_file,
    guest_apt,
)

__all__ = [
    "GuestAssets",
    "assets_for_kernel",
    "build_assets",
    "build_busybox",
    "build_extra_kernel",
    "build_vmm",
    "check_assets",
    "check_probe_sets",
    "guest_apt",
    "load_assets",
    "with_kernel",
]

log = logging.getLogger(__name__)

MANIFEST = "assets.json"


@dataclass(frozen=True)
class GuestAssets:
    """What ``guest build`` made: paths and the versions they were made from."""

    kernel_package: str
    kernel_version: str
    kernel_release: str
    #: major.minor from the Image's own banner: what probe sets are chosen by.
    kernel_family: str
    #: The Image's ``Linux version ...`` banner.
    kernel_banner: str
    image: str
    kernel_config: str
    symbols: str
    layout: str
    symbol_count: int
    busybox_version: str
    vmm: str
    vmm_hash: str
    initramfs: str
    built_at: float

    @property
    def image_path(self) -> Path:
        return Path(self.image)

    @property
    def initramfs_path(self) -> Path:
        return Path(self.initramfs)

    def sizes(self) -> dict[str, int]:
        return {
            name: Path(p).stat().st_size
            for name, p in (
                ("kernel", self.image),
                ("initramfs", self.initramfs),
                ("vmm", self.vmm),
            )
            if Path(p).exists()
        }


def _hash_tree(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO_ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load_assets(cache: Path | None = None) -> GuestAssets:
    """The current assets, or EnvironmentProblem naming the command that builds them."""
    path = (cache or cache_dir()) / MANIFEST
    try:
        data = json.loads(path.read_text())
        assets = GuestAssets(**data)
    except FileNotFoundError:
        raise EnvironmentProblem(
            "guest assets are not built", hint="run `tracekit guest build` (or `make setup`)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise EnvironmentProblem(
            f"guest asset manifest {path} is unreadable ({exc})",
            hint="run `tracekit guest build --force`",
        ) from None
    for p in (assets.image, assets.initramfs, assets.symbols, assets.layout):
        if not Path(p).exists():
            raise EnvironmentProblem(
                f"guest asset {p} is missing", hint="run `tracekit guest build --force`"
            )
    return assets


def check_assets(guest: GuestConfig) -> CheckResult:
    try:
        a = load_assets()
    except EnvironmentProblem as exc:
        return CheckResult("guest assets", False, exc.message, "tracekit guest build")
    stale = _vmm_hash(guest) != a.vmm_hash
    detail = (
        f"kernel {a.kernel_release} ({a.kernel_version}, family {a.kernel_family}), "
        f"{a.symbol_count} symbols, busybox {a.busybox_version}"
    )
    if stale:
        return CheckResult(
            "guest assets", False, detail + "; VMM sources changed", "tracekit guest build"
        )
    return CheckResult("guest assets", True, detail)


def check_probe_sets() -> CheckResult:
    """Which probe sets are written for the cached kernel's family (record needs one)."""
    from tracekit.probes.select import available_probe_sets

    sets = available_probe_sets()
    listing = ", ".join(f"{s.name} (kernel {s.kernel})" for s in sets)
    try:
        a = load_assets()
    except EnvironmentProblem:
        return CheckResult(
            "probe sets", False, f"no cached kernel; have {listing}", "tracekit guest build"
        )
    match = [s.name for s in sets if s.kernel == a.kernel_family]
    if not match:
        return CheckResult(
            "probe sets",
            False,
            f"none for kernel {a.kernel_release} (family {a.kernel_family}); have {listing}",
            "tracekit guest build --force  (the pinned Debian kernel)",
        )
    return CheckResult("probe sets", True, f"{', '.join(match)} matches kernel {a.kernel_release}")


# --------------------------------------------------------------------------- busybox, VMM


def _build_busybox(
    guest: GuestConfig, tools: ToolPaths, cache: Path, force: bool, report: Report
) -> tuple[str, Path]:
    apt = guest_apt(guest, tools, cache)
    ref = apt.resolve(guest.busybox.package)
    bdir = cache / "busybox" / ref.version
    binary = bdir / "busybox"
    if binary.exists() and not force:
        report(f"busybox {ref.version}: cached")
        return ref.version, binary
    report(f"downloading {ref.spec} {ref.version}")
    deb = apt.download(ref, bdir / "deb")
    root = apt.unpack(deb, bdir / "root")
    # Debian 12's busybox-static installs /bin/busybox, Debian 13's /usr/bin/busybox.
    found = [p for p in (root / "bin" / "busybox", root / "usr" / "bin" / "busybox") if p.is_file()]
    if not found:
        raise GuestBuildError(
            f"{deb.name} has no busybox binary (looked in /bin and /usr/bin)",
            hint="set [busybox] package in configs/guest.toml to a static arm64 busybox",
        )
    shutil.copyfile(found[0], binary)
    shutil.rmtree(root)
    shutil.rmtree(bdir / "deb")
    return ref.version, binary


def _vmm_sources(guest: GuestConfig) -> list[Path]:
    src = REPO_ROOT / guest.vmm_source
    return [p for p in src.rglob("*") if p.is_file() and "build" not in p.parts]


def _vmm_hash(guest: GuestConfig) -> str:
    return _hash_tree([*_vmm_sources(guest), REPO_ROOT / guest.init_source])


def _build_vmm(
    guest: GuestConfig, tools: ToolPaths, cache: Path, force: bool, report: Report
) -> tuple[str, Path]:
    digest = _hash_tree(_vmm_sources(guest))
    out = cache / "vmm" / digest
    binary = out / "tk-vmm"
    if binary.exists() and not force:
        report("L2 VMM + payload: cached")
        return digest, binary
    report("cross-compiling the L2 VMM and payload")
    cross = tools.cross_gcc.removesuffix("gcc")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["make", "-C", str(REPO_ROOT / guest.vmm_source), f"OUT={out}", f"CROSS={cross}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not binary.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise GuestBuildError(
            "building the L2 VMM failed: " + " | ".join(tail),
            hint="check `tracekit doctor` for the cross compiler",
        )
    return digest, binary


def _build_initramfs(
    guest: GuestConfig, busybox: Path, vmm: Path, cache: Path, force: bool, report: Report
) -> Path:
    init = (REPO_ROOT / guest.init_source).read_bytes()
    h = hashlib.sha256(init + busybox.read_bytes() + vmm.read_bytes()).hexdigest()[:16]
    path = cache / "initramfs" / f"initramfs-{h}.cpio.gz"
    if path.exists() and not force:
        report("initramfs: cached")
        return path
    report("packing the initramfs")
    entries = [
        initramfs.directory(d)
        for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "usr", "usr/bin", "usr/sbin")
    ]
    entries += [
        initramfs.file("bin/busybox", busybox.read_bytes(), 0o755),
        initramfs.symlink("bin/sh", "busybox"),
        initramfs.file("bin/tk-vmm", vmm.read_bytes(), 0o755),
        initramfs.file("init", init, 0o755),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(initramfs.gzip_deterministic(initramfs.build_newc(entries)))
    tmp.replace(path)
    return path


#: The busybox and VMM builders, for stacks built around the default one (guest/linux_l2.py).
build_busybox = _build_busybox
build_vmm = _build_vmm


def _kernel_fields(kmeta: Mapping[str, str | int]) -> dict[str, Any]:
    """GuestAssets' kernel fields from a kernel directory's record (kernel.KERNEL_META)."""
    return {
        "kernel_package": str(kmeta["package"]),
        "kernel_version": str(kmeta["version"]),
        "kernel_release": str(kmeta["release"]),
        "kernel_family": str(kmeta["family"]),
        "kernel_banner": str(kmeta["banner"]),
        "image": str(kmeta["image"]),
        "kernel_config": str(kmeta["config"]),
        "symbols": str(kmeta["symbols"]),
        "layout": str(kmeta["layout"]),
        "symbol_count": int(kmeta["symbol_count"]),
    }


def with_kernel(assets: GuestAssets, kmeta: Mapping[str, str | int]) -> GuestAssets:
    """The same guest stack with another kernel (the initramfs does not depend on it)."""
    return dataclasses.replace(assets, **_kernel_fields(kmeta))


def assets_for_kernel(
    guest: GuestConfig,
    tools: ToolPaths,
    kernel: str | None,
    report: Report = lambda _msg: None,
) -> GuestAssets:
    """The cached assets, with ``kernel`` instead of the default one: a family of
    configs/guest.toml [kernels] (fetched and cached if needed) or an Image path (its
    kernel directory is cached by content). None: the default."""
    assets = load_assets()
    if kernel is None:
        return assets
    if kernel in guest.kernels:
        return with_kernel(assets, build_extra_kernel(guest, tools, kernel, report=report))
    path = Path(kernel)
    if not path.exists() and "/" not in kernel:
        raise GuestBuildError(
            f"--kernel {kernel!r} is neither a kernel family of configs/guest.toml nor a file",
            hint=f"use one of {', '.join(sorted(guest.kernels)) or 'none'} or an Image path",
        )
    return with_kernel(assets, build_kernel_from_file(path, guest, cache_dir(), False, report))


def build_assets(
    guest: GuestConfig,
    tools: ToolPaths,
    *,
    force: bool = False,
    report: Report = lambda _msg: None,
    cache: Path | None = None,
    kernel: Path | None = None,
) -> GuestAssets:
    """Make (or reuse) every guest asset and write the manifest."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o700)
    kmeta = (
        build_kernel_from_file(kernel, guest, cache, force, report)
        if kernel is not None
        else build_kernel(guest, tools, cache, force, report)
    )
    bb_version, busybox = _build_busybox(guest, tools, cache, force, report)
    _, vmm = _build_vmm(guest, tools, cache, force, report)
    initrd = _build_initramfs(guest, busybox, vmm, cache, force, report)
    assets = GuestAssets(
        **_kernel_fields(kmeta),
        busybox_version=bb_version,
        vmm=str(vmm),
        vmm_hash=_vmm_hash(guest),
        initramfs=str(initrd),
        built_at=time.time(),
    )
    (cache / MANIFEST).write_text(json.dumps(asdict(assets), indent=1))
    return assets

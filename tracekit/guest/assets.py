"""Build and cache the built-in guest stack: L1 kernel + symbols + BTF layout, VMM, initramfs.

Everything comes from package registries and this repository; each piece is cached under
:func:`tracekit.config.cache_dir` keyed by its inputs (package version, source hash), so it
is rebuilt only when an input changes. ``assets.json`` in the cache names the current set.
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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tracekit.config import REPO_ROOT, GuestConfig, ToolPaths, cache_dir
from tracekit.env.doctor import CheckResult
from tracekit.errors import EnvironmentProblem, GuestBuildError, KernelImageError, SymbolError
from tracekit.guest import debian, initramfs

__all__ = [
    "GuestAssets",
    "assets_for_kernel",
    "build_assets",
    "build_extra_kernel",
    "check_assets",
    "check_probe_sets",
    "load_assets",
    "with_kernel",
]

log = logging.getLogger(__name__)

Report = Callable[[str], None]

MANIFEST = "assets.json"
#: Written last by _store_kernel: its presence marks a complete kernel directory.
KERNEL_META = "kernel.json"


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


# --------------------------------------------------------------------------- kernel


def _kernel_release(image_pkg: str) -> str:
    # linux-image-6.1.0-56-cloud-arm64 -> 6.1.0-56-cloud-arm64
    return image_pkg.removeprefix("linux-image-")


def _validate_config(config_text: str, path: Path) -> None:
    needed = {
        "CONFIG_KVM": "y",
        "CONFIG_DEBUG_INFO_BTF": "y",
        "CONFIG_ARM_GIC_V3": "y",
        "CONFIG_KALLSYMS": "y",
    }
    have = dict(
        line.split("=", 1) for line in config_text.splitlines() if line.startswith("CONFIG_")
    )
    missing = [f"{k}={v}" for k, v in needed.items() if have.get(k) != v]
    if missing:
        raise KernelImageError(
            f"kernel config {path} lacks {', '.join(missing)}",
            hint="use a kernel built with KVM, GICv3, kallsyms and BTF",
        )


def guest_apt(
    guest: GuestConfig, tools: ToolPaths, cache: Path, suite: str | None = None
) -> debian.PrivateApt:
    """apt for the guest's pinned Debian suite (or ``suite``), with its lists in the cache."""
    arch = guest.kernel.architecture
    suite = suite or guest.debian_suite
    return debian.PrivateApt(
        cache / "apt" / f"{suite}-{arch}", suite, arch, debian.host_mirrors(), tools
    )


def _check_family_has_probes(release: str, what: str) -> None:
    """A Debian kernel is only taken when a probe set is written for its family."""
    from tracekit.kernel.version import family_of
    from tracekit.probes.select import available_probe_sets

    sets = available_probe_sets()
    family = family_of(release)
    if not any(s.kernel == family for s in sets):
        listing = ", ".join(f"{s.name} (kernel {s.kernel})" for s in sets)
        raise GuestBuildError(
            f"{what} is kernel {release} (family {family}), but probe sets exist only for"
            f" {listing}",
            hint="set debian_suite in configs/guest.toml to a suite with a supported kernel,"
            " or pass `--kernel IMAGE`",
        )


def _build_kernel(
    guest: GuestConfig,
    tools: ToolPaths,
    cache: Path,
    force: bool,
    report: Report,
    *,
    suite: str | None = None,
    package: str | None = None,
) -> dict[str, str | int]:
    from tracekit.kernel import kallsyms

    suite = suite or guest.debian_suite
    package = package or guest.kernel.package
    apt = guest_apt(guest, tools, cache, suite)
    report(f"resolving {package}:{guest.kernel.architecture} in {suite}")
    if force:
        apt.update(force=True)
    ref = apt.resolve(package, follow_metapackage=True)
    _check_family_has_probes(_kernel_release(ref.name), f"Debian {suite}'s {ref.name}")
    kdir = cache / "kernel" / f"{ref.name}_{ref.version}"
    meta = None if force else _cached_kernel(kdir)
    if meta is not None:
        report(f"kernel {ref.name} {ref.version}: cached")
        return meta
    if kdir.exists():
        shutil.rmtree(kdir)
    report(f"downloading {ref.spec} {ref.version}")
    deb = apt.download(ref, kdir / "deb")
    report(f"unpacking {deb.name}")
    root = apt.unpack(deb, kdir / "root")
    release = _kernel_release(ref.name)
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    config = root / "boot" / f"config-{release}"
    if not vmlinuz.exists():
        raise GuestBuildError(f"{deb.name} has no boot/vmlinuz-{release}")
    data = vmlinuz.read_bytes()
    kallsyms.read_image_header(data)  # raises KernelImageError if not an arm64 Image
    _validate_config(config.read_text(), config)
    meta = _store_kernel(
        kdir,
        data,
        config.read_text(),
        guest,
        report,
        source=str(vmlinuz),
        package=ref.name,
        version=ref.version,
        release=release,
    )
    shutil.rmtree(root)
    shutil.rmtree(kdir / "deb")
    return meta


#: A kernel tracekit can trace must have KVM built in (these are on the probed path).
KVM_SYMBOLS = ("kvm_arch_vcpu_ioctl_run", "handle_exit", "kvm_vgic_flush_hwstate")


def _cached_kernel(kdir: Path) -> dict[str, str | int] | None:
    """What ``_store_kernel`` recorded in ``kdir``, if it finished there."""
    meta_path = kdir / KERNEL_META
    if not meta_path.exists():
        return None
    meta: dict[str, str | int] = json.loads(meta_path.read_text())
    if "family" not in meta:  # cached before the banner was recorded
        from tracekit.kernel.version import read_kernel_version

        version = read_kernel_version(Path(str(meta["image"])).read_bytes())
        meta = {**meta, "family": version.family, "banner": version.banner}
        meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _layout_for_probes(parsed: Any, family: str) -> dict[str, dict[str, int]]:
    """Offsets of every struct member a probe set's captures read (derived from the
    captures, never a hand-kept list). The set written for ``family`` must resolve whole;
    for a kernel without one, what resolves of all sets is kept (`probes check` names the
    rest)."""
    from tracekit.kernel import btf
    from tracekit.probes.select import available_probe_sets
    from tracekit.probes.spec import load_probe_set

    sets = available_probe_sets()
    mine = [s for s in sets if s.kernel == family]
    members = {m for s in (mine or sets) for m in load_probe_set(str(s.path)).btf_members()}
    if mine:
        return btf.extract_layout(parsed, sorted(members))
    layout: dict[str, dict[str, int]] = {}
    for member in sorted(members):
        try:
            layout |= btf.extract_layout(parsed, [member])
        except SymbolError:
            continue
    return layout


def _store_kernel(
    kdir: Path,
    data: bytes,
    config_text: str,
    guest: GuestConfig,
    report: Report,
    *,
    source: str,
    package: str,
    version: str,
    release: str,
) -> dict[str, str | int]:
    """Check an arm64 Image for KVM, extract its symbols and BTF layout, cache them."""
    from tracekit.kernel import btf, kallsyms
    from tracekit.kernel.version import read_kernel_version

    report("extracting kallsyms (vmlinux-to-elf)")
    symbols = kallsyms.symbols_from_image(data, source=source)
    kernel = read_kernel_version(data, source=source)
    missing = [s for s in KVM_SYMBOLS if not symbols.has(s)]
    if missing:
        raise KernelImageError(
            f"kernel image {source} has no KVM ({', '.join(missing)} missing)",
            hint="build it with CONFIG_KVM=y (arm64 KVM is built in, not a module)",
        )
    report("reading struct layouts from BTF")
    parsed = btf.Btf.parse(btf.find_btf_blob(data, source=source))
    layout = _layout_for_probes(parsed, kernel.family)
    kdir.mkdir(parents=True, exist_ok=True)
    image = kdir / "Image"
    image.write_bytes(data)
    (kdir / "config").write_text(config_text)
    (kdir / "symbols.json").write_text(symbols.to_json())
    (kdir / "layout.json").write_text(json.dumps(layout, indent=1, sort_keys=True))
    meta: dict[str, str | int] = {
        "package": package,
        "version": version,
        "release": release or kernel.release,
        "family": kernel.family,
        "banner": kernel.banner,
        "image": str(image),
        "config": str(kdir / "config"),
        "symbols": str(kdir / "symbols.json"),
        "layout": str(kdir / "layout.json"),
        "symbol_count": len(symbols),
    }
    (kdir / KERNEL_META).write_text(json.dumps(meta, indent=1))
    return meta


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


def _build_kernel_from_file(
    path: Path, guest: GuestConfig, cache: Path, force: bool, report: Report
) -> dict[str, str | int]:
    """A user-supplied arm64 ``Image`` instead of Debian's: the same checks and extraction."""
    from tracekit.kernel import kallsyms

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KernelImageError(
            f"kernel image {path} does not exist",
            hint="pass the path of an uncompressed arm64 Image",
        ) from None
    except OSError as exc:
        raise KernelImageError(f"cannot read kernel image {path}: {exc.strerror}") from None
    kallsyms.read_image_header(data, source=str(path))
    digest = hashlib.sha256(data).hexdigest()[:16]
    kdir = cache / "kernel" / f"custom_{digest}"
    cached = None if force else _cached_kernel(kdir)
    if cached is not None:
        report(f"kernel {path.name} ({digest}): cached")
        return cached
    return _store_kernel(
        kdir,
        data,
        "# supplied by the user; no config file\n",
        guest,
        report,
        source=str(path),
        package="custom",
        version=digest,
        release="",  # the Image's own banner names it
    )


def build_extra_kernel(
    guest: GuestConfig,
    tools: ToolPaths,
    family: str,
    *,
    force: bool = False,
    report: Report = lambda _msg: None,
    cache: Path | None = None,
) -> dict[str, str | int]:
    """Fetch and cache the pinned kernel of another family (configs/guest.toml [kernels])
    beside the default one; the manifest (the default kernel) is not changed."""
    choice = guest.kernels.get(family)
    if choice is None:
        raise GuestBuildError(
            f"no kernel family {family!r} in configs/guest.toml",
            hint=f"known: {', '.join(sorted(guest.kernels)) or 'none'}, or pass an Image path",
        )
    return _build_kernel(
        guest,
        tools,
        cache or cache_dir(),
        force,
        report,
        suite=choice.suite,
        package=choice.package,
    )


def _kernel_fields(kmeta: Mapping[str, str | int]) -> dict[str, Any]:
    """GuestAssets' kernel fields from a kernel directory's KERNEL_META record."""
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
    return with_kernel(assets, _build_kernel_from_file(path, guest, cache_dir(), False, report))


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
        _build_kernel_from_file(kernel, guest, cache, force, report)
        if kernel is not None
        else _build_kernel(guest, tools, cache, force, report)
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

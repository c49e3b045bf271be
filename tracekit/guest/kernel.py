"""The guest's L1 kernel: Debian's pinned kernel package (or a user's arm64 ``Image``),
checked for KVM, with its kallsyms symbols and BTF struct layout extracted and cached.

Each kernel is cached in its own directory under the cache (keyed by package and version,
or by the Image's content); :data:`KERNEL_META` is written last and marks it complete.
:mod:`tracekit.guest.assets` builds the rest of the guest stack around it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracekit.config import GuestConfig, ToolPaths, cache_dir
from tracekit.errors import GuestBuildError, KernelImageError, SymbolError
from tracekit.guest import debian

__all__ = [
    "KERNEL_META",
    "KVM_SYMBOLS",
    "Report",
    "build_extra_kernel",
    "build_kernel",
    "build_kernel_from_file",
    "guest_apt",
]

Report = Callable[[str], None]

#: Written last by _store_kernel: its presence marks a complete kernel directory.
KERNEL_META = "kernel.json"


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


def build_kernel(
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
    mine, members = _probed_members(str(meta["family"]))
    digest = _members_digest(members)
    if meta.get("layout_members") != digest:
        # The probe sets read more (or other) members than when this kernel was cached
        # (a new capture, e.g. the msi class's struct kvm_msi): the cached layout is
        # re-read from the Image's own BTF, so the cache never lags the probe sets.
        from tracekit.kernel import btf

        parsed = btf.Btf.parse(btf.find_btf_blob(Path(str(meta["image"])).read_bytes()))
        layout = _layout_for_probes(parsed, mine, members)
        Path(str(meta["layout"])).write_text(json.dumps(layout, indent=1, sort_keys=True))
        meta = {**meta, "layout_members": digest}
        meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _probed_members(family: str) -> tuple[bool, set[str]]:
    """Every struct member the probe sets' captures read (derived from the captures, never
    a hand-kept list): the set written for ``family``, or all sets for a kernel without
    one. The flag says whether ``family`` has its own set."""
    from tracekit.probes.select import available_probe_sets
    from tracekit.probes.spec import load_probe_set

    sets = available_probe_sets()
    mine = [s for s in sets if s.kernel == family]
    return bool(mine), {
        m for s in (mine or sets) for m in load_probe_set(str(s.path)).btf_members()
    }


def _members_digest(members: set[str]) -> str:
    return hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]


def _layout_for_probes(parsed: Any, mine: bool, members: set[str]) -> dict[str, dict[str, int]]:
    """Offsets of ``members`` (:func:`_probed_members`). A kernel's own set (``mine``) must
    resolve whole; for a kernel without one, what resolves of all sets is kept
    (`probes check` names the rest)."""
    from tracekit.kernel import btf

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
    mine, members = _probed_members(kernel.family)
    layout = _layout_for_probes(parsed, mine, members)
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
        "layout_members": _members_digest(members),
        "symbol_count": len(symbols),
    }
    (kdir / KERNEL_META).write_text(json.dumps(meta, indent=1))
    return meta


def build_kernel_from_file(
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
    return build_kernel(
        guest,
        tools,
        cache or cache_dir(),
        force,
        report,
        suite=choice.suite,
        package=choice.package,
    )

"""Build and cache the opt-in Linux-L2 stack of issue 15 (``guest build --linux-l2``).

Everything comes from Debian's arm64 packages of the guest suite (configs/guest.toml) and
this repository, and lands under ``<cache>/l2linux/``; nothing of the default stack
(``assets.json``, its initramfs) changes. The pieces:

- Debian's arm64 QEMU (``qemu_package`` in configs/linux-l2.toml) and the libraries its
  binary loads. Which libraries is decided by the binary's own ``NEEDED`` entries, walked
  recursively (:mod:`tracekit.guest.elf`), never by a list. Which *packages* hold them is
  learnt lazily: a package's direct ``Depends`` are fetched only while some file of that
  package still needs a library no fetched package has. The loader is the binary's
  ``PT_INTERP``.
- The L2 kernel: the same Debian cloud Image L1 boots (``assets.json``), and the modules
  configs/linux-l2.toml names, with their dependencies from that kernel package's own
  ``modules.dep`` (:mod:`tracekit.guest.kmodules`).
- L2's initramfs: busybox + ``guests/linux-l2/init-l2`` + the modules (gzip; small).
- L1's initramfs: what the default one holds (busybox, ``tk-vmm``, ``guests/init/init`` as
  ``/init.vmm``), ``guests/linux-l2/init-l1`` as ``/init``, QEMU, its libraries and loader,
  the L2 kernel and initramfs, and one shell script per scenario that execs the inner
  QEMU. It is left uncompressed: gunzip of ~90 MB under TCG costs L1 more than QEMU's
  reading the bigger file costs the host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tracekit.config import REPO_ROOT, GuestConfig, LinuxL2Config, ToolPaths, cache_dir
from tracekit.errors import EnvironmentProblem, GuestBuildError
from tracekit.guest import initramfs
from tracekit.guest.assets import GuestAssets, build_busybox, build_vmm, load_assets
from tracekit.guest.debian import PackageRef, PrivateApt
from tracekit.guest.elf import needed_closure, read_dynamic, read_section
from tracekit.guest.kernel import Report, guest_apt
from tracekit.guest.kmodules import deps_from_modinfo, load_order, modinfo, parse_modules_dep

__all__ = ["L2_DIR", "LinuxL2Assets", "build_linux_l2", "load_linux_l2"]

log = logging.getLogger(__name__)

L2_DIR = "l2linux"
MANIFEST = "assets.json"
INIT_L1 = "guests/linux-l2/init-l1"
INIT_L2 = "guests/linux-l2/init-l2"
#: L2's window marker (static; guests/linux-l2/tk-l2mark.c).
MARKER_SOURCE = "guests/linux-l2/tk-l2mark.c"
#: Where the L2 pieces sit in L1's initramfs.
L2_IMAGE = "/l2/Image"
L2_INITRD = "/l2/initramfs.cpio.gz"
#: Fetch rounds for library packages before giving up (Depends chains are short).
MAX_ROUNDS = 8


@dataclass(frozen=True)
class LinuxL2Assets:
    """What ``guest build --linux-l2`` made (``<cache>/l2linux/assets.json``)."""

    qemu_package: str
    qemu_version: str
    #: soname -> "path in L1 (package)" for every library of the NEEDED closure.
    libraries: dict[str, str]
    interpreter: str
    kernel_release: str
    kernel_version: str
    modules: tuple[str, ...]
    l1_kernel: str
    l1_initramfs: str
    l2_initramfs: str
    scenarios: tuple[str, ...]
    built_at: float

    @property
    def l1_initramfs_path(self) -> Path:
        return Path(self.l1_initramfs)


def load_linux_l2(cache: Path | None = None) -> LinuxL2Assets:
    path = (cache or cache_dir()) / L2_DIR / MANIFEST
    try:
        data = json.loads(path.read_text())
        data["modules"] = tuple(data["modules"])
        data["scenarios"] = tuple(data["scenarios"])
        assets = LinuxL2Assets(**data)
    except FileNotFoundError:
        raise EnvironmentProblem(
            "the Linux L2 assets are not built", hint="run `tracekit guest build --linux-l2`"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise EnvironmentProblem(
            f"Linux L2 manifest {path} is unreadable ({exc})",
            hint="run `tracekit guest build --linux-l2 --force`",
        ) from None
    for p in (assets.l1_kernel, assets.l1_initramfs):
        if not Path(p).exists():
            raise EnvironmentProblem(
                f"Linux L2 asset {p} is missing",
                hint="run `tracekit guest build --linux-l2 --force`",
            )
    return assets


# --------------------------------------------------------------------------- packages


class _Unpacked:
    """The union of unpacked package trees as one read-only file view (elf.FileView)."""

    def __init__(self) -> None:
        self.trees: list[tuple[str, Path]] = []

    def add(self, owner: str, root: Path) -> None:
        self.trees.append((owner, root))

    def _find(self, path: str) -> tuple[str, Path] | None:
        """(owner, host path) of ``path`` with every symlink followed, across trees."""
        for _ in range(16):
            hit = next(
                ((o, r / path.lstrip("/")) for o, r in self.trees
                 if os.path.lexists(r / path.lstrip("/"))),
                None,
            )  # fmt: skip
            if hit is None:
                return None
            owner, host = hit
            if not host.is_symlink():
                return (owner, host) if host.is_file() else None
            target = os.readlink(host)
            path = posixpath.normpath(
                target
                if target.startswith("/")
                else posixpath.join(posixpath.dirname(path), target)
            )
        return None

    def read(self, path: str) -> bytes | None:
        hit = self._find(path)
        return hit[1].read_bytes() if hit else None

    def owner(self, path: str) -> str:
        hit = self._find(path)
        return hit[0] if hit else "?"


def _fetch(apt: PrivateApt, ref: PackageRef, base: Path, report: Report) -> Path:
    """The unpacked tree of ``ref`` under ``base/pkgs`` (cached; a marker ends it)."""
    tree = base / "pkgs" / f"{ref.name}_{ref.version.replace(':', '_')}"
    if (tree / ".unpacked").exists():
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    report(f"Linux L2: downloading {ref.spec} {ref.version}")
    deb = apt.download(ref, base / "debs")
    apt.unpack(deb, tree)
    (tree / ".unpacked").touch()
    deb.unlink()
    return tree


def _qemu_closure(
    cfg: LinuxL2Config, apt: PrivateApt, base: Path, report: Report
) -> tuple[PackageRef, _Unpacked, dict[str, str], str]:
    """QEMU unpacked with every package its NEEDED closure reaches.

    Returns (qemu ref, view, soname -> path, interpreter path)."""
    view = _Unpacked()
    qemu = apt.resolve(cfg.qemu_package)
    view.add(qemu.name, _fetch(apt, qemu, base, report))
    # The packages an earlier build of this QEMU version needed: reused without asking apt.
    record = base / "closure.json"
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get("qemu") == [qemu.name, qemu.version]:
        for name, version in known.get("packages", []):
            tree = base / "pkgs" / f"{name}_{version.replace(':', '_')}"
            if (tree / ".unpacked").exists():
                view.add(name, tree)
    fetched = {owner for owner, _ in view.trees}
    refs: list[list[str]] = []
    for _ in range(MAX_ROUNDS):
        libs, missing = needed_closure([cfg.qemu_binary], view)
        if not missing:
            break
        owners = {view.owner(needer) for _, needer in missing}
        new = [d for o in sorted(owners) for d in apt.depends(o) if d not in fetched]
        if not new:
            names = ", ".join(f"{s} (needed by {n})" for s, n in missing)
            raise GuestBuildError(
                f"no package in the Depends of {', '.join(sorted(owners))} has {names}",
                hint="check `qemu_package` in configs/linux-l2.toml",
            )
        for name in dict.fromkeys(new):
            fetched.add(name)
            ref = apt.resolve(name)
            view.add(ref.name, _fetch(apt, ref, base, report))
            refs.append([ref.name, ref.version])
    else:
        raise GuestBuildError(
            f"the libraries of {cfg.qemu_binary} did not resolve in {MAX_ROUNDS} rounds"
        )
    if refs:
        packages = (
            [*known.get("packages", []), *refs]
            if known.get("qemu") == [qemu.name, qemu.version]
            else refs
        )
        record.write_text(json.dumps({"qemu": [qemu.name, qemu.version], "packages": packages}))
    qemu_bytes = view.read(cfg.qemu_binary)
    assert qemu_bytes is not None
    interp = read_dynamic(qemu_bytes, cfg.qemu_binary).interpreter
    if interp is None or view.read(interp) is None:
        raise GuestBuildError(f"{cfg.qemu_binary}'s loader {interp} is in no fetched package")
    report(f"Linux L2: {len(libs)} libraries from {len(fetched)} packages")
    return qemu, view, {lib.soname: f"{lib.path} ({lib.owner})" for lib in libs}, interp


# --------------------------------------------------------------------------- L2 kernel


def _l2_modules(
    cfg: LinuxL2Config, apt: PrivateApt, l1: GuestAssets, base: Path, report: Report
) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """(module file name -> bytes, load order) from the L1 kernel's own package."""
    kdir = base / "modules" / f"{l1.kernel_package}_{l1.kernel_version}"
    order_file = kdir / "load-order"
    if not order_file.exists():
        if l1.kernel_package == "custom":
            raise GuestBuildError(
                "the Linux L2 stack needs a Debian kernel (its modules)",
                hint="run `tracekit guest build` without --kernel first",
            )
        ref = PackageRef(l1.kernel_package, apt.architecture, l1.kernel_version)
        tree = _fetch(apt, ref, base, report)
        mroot = tree / "lib" / "modules" / l1.kernel_release
        order = load_order(cfg.modules, _module_deps(mroot, report))
        kdir.mkdir(parents=True, exist_ok=True)
        names = []
        for rel in order:
            name = posixpath.basename(rel)
            shutil.copyfile(mroot / rel, kdir / name)
            names.append(name)
        order_file.write_text("\n".join(names) + "\n")
        shutil.rmtree(tree)  # ~100 MB of modules; the few needed are kept
    names = order_file.read_text().split()
    return {n: (kdir / n).read_bytes() for n in names}, tuple(names)


def _module_deps(mroot: Path, report: Report) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The tree's modules.dep if it has one, else the same map from every ``.modinfo``."""
    dep = mroot / "modules.dep"
    if dep.exists():
        return parse_modules_dep(dep.read_text())
    report("Linux L2: reading module dependencies from .modinfo")
    infos: dict[str, dict[str, str]] = {}
    for ko in sorted(mroot.rglob("*.ko")):
        rel = str(ko.relative_to(mroot))
        section = read_section(ko.read_bytes(), ".modinfo", rel)
        infos[rel] = modinfo(section) if section is not None else {}
    return deps_from_modinfo(infos)


def _dirs_for(paths: list[str]) -> list[initramfs.CpioEntry]:
    """Directory entries for every parent of ``paths``, parents first."""
    dirs: set[str] = set()
    for p in paths:
        parent = posixpath.dirname(p.strip("/"))
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return [initramfs.directory(d) for d in sorted(dirs, key=lambda d: (d.count("/"), d))]


def build_marker(tools: ToolPaths, cache: Path, report: Report) -> Path:
    """Cross-compile L2's window marker (static, so L2 needs no libc), cached by source."""
    source = REPO_ROOT / MARKER_SOURCE
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = cache / L2_DIR / "marker" / digest / "tk-l2mark"
    if binary.exists():
        return binary
    report("Linux L2: cross-compiling the window marker")
    binary.parent.mkdir(parents=True, exist_ok=True)
    argv = [tools.cross_gcc, "-static", "-O2", "-Wall", "-Wextra", "-Werror"]
    proc = subprocess.run(
        [*argv, "-o", str(binary), str(source)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not binary.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise GuestBuildError(
            "building L2's window marker failed: " + " | ".join(tail),
            hint="check `tracekit doctor` for the cross compiler",
        )
    return binary


def _l2_initramfs(
    busybox: Path, marker: Path, modules: dict[str, bytes], order: tuple[str, ...]
) -> bytes:
    files = [
        initramfs.file("bin/busybox", busybox.read_bytes(), 0o755),
        initramfs.file("bin/tk-l2mark", marker.read_bytes(), 0o755),
        initramfs.symlink("bin/sh", "busybox"),
        initramfs.file("init", (REPO_ROOT / INIT_L2).read_bytes(), 0o755),
        initramfs.file("lib/modules/load-order", ("\n".join(order) + "\n").encode()),
        *(initramfs.file(f"lib/modules/{n}", data) for n, data in modules.items()),
    ]
    dirs = [initramfs.directory(d) for d in ("dev", "proc", "sys", "tmp")]
    entries = _dirs_for([f.path for f in files]) + dirs + files
    return initramfs.gzip_deterministic(initramfs.build_newc(entries))


def scenario_script(cfg: LinuxL2Config, name: str, qemu_binary: str) -> str:
    """The shell script L1's /init runs for one scenario: make the disk, exec the QEMU."""
    sc = cfg.get(name)
    append = " ".join((*cfg.l2_cmdline, f"tracekit.scenario={name}"))
    argv = [qemu_binary, *cfg.inner_args, *sc.devices]
    argv += ["-kernel", L2_IMAGE, "-initrd", L2_INITRD]
    # $TK_QEMU_EXTRA (split) and $TK_L2_APPEND: the tests' fault injection (init-l1).
    return (
        f"# {sc.description} (configs/linux-l2.toml)\n"
        f"dd if=/dev/zero of=/tmp/l2disk.img bs=1M count={cfg.disk_mb} 2>/dev/null\n"
        f'exec {shlex.join(argv)} $TK_QEMU_EXTRA -append "{append} $TK_L2_APPEND"\n'
    )


def build_linux_l2(
    guest: GuestConfig,
    cfg: LinuxL2Config,
    tools: ToolPaths,
    *,
    force: bool = False,
    report: Report = lambda _msg: None,
    cache: Path | None = None,
) -> LinuxL2Assets:
    """Make (or reuse) the Linux-L2 assets; needs the default ones (``guest build``)."""
    cache = cache or cache_dir()
    base = cache / L2_DIR
    if force and base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True, exist_ok=True)
    l1 = load_assets(cache)
    apt = guest_apt(guest, tools, cache)
    qemu, view, libraries, interp = _qemu_closure(cfg, apt, base, report)
    modules, order = _l2_modules(cfg, apt, l1, base, report)
    _, busybox = build_busybox(guest, tools, cache, False, report)
    _, vmm = build_vmm(guest, tools, cache, False, report)
    marker = build_marker(tools, cache, report)
    l2_initrd = _l2_initramfs(busybox, marker, modules, order)

    # L1's initramfs: its inputs' hash names it, so an unchanged build is cached.
    lib_files = {path.split(" ")[0]: view.read(path.split(" ")[0]) for path in libraries.values()}
    files: dict[str, tuple[bytes, int]] = {
        "bin/busybox": (busybox.read_bytes(), 0o755),
        "bin/tk-vmm": (vmm.read_bytes(), 0o755),
        "init.vmm": ((REPO_ROOT / guest.init_source).read_bytes(), 0o755),
        "init": ((REPO_ROOT / INIT_L1).read_bytes(), 0o755),
        cfg.qemu_binary.lstrip("/"): (view.read(cfg.qemu_binary) or b"", 0o755),
        interp.lstrip("/"): (view.read(interp) or b"", 0o755),
        L2_IMAGE.lstrip("/"): (l1.image_path.read_bytes(), 0o644),
        L2_INITRD.lstrip("/"): (l2_initrd, 0o644),
    }
    for path, data in lib_files.items():
        assert data is not None
        files[path.lstrip("/")] = (data, 0o644)
    for name in cfg.scenario:
        script = scenario_script(cfg, name, cfg.qemu_binary)
        files[f"l2/scenarios/{name}"] = (script.encode(), 0o755)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path][0]).digest())
    out = base / "initramfs" / f"l1-linux-l2-{h.hexdigest()[:16]}.cpio"
    if not out.exists():
        report("Linux L2: packing L1's initramfs")
        base_dirs = ("dev", "proc", "sys", "tmp", "etc", "usr", "usr/sbin")
        entries = [initramfs.directory(d) for d in base_dirs]
        entries += _dirs_for(list(files))
        entries += [initramfs.symlink("bin/sh", "busybox")]
        entries += [initramfs.file(p, d, m) for p, (d, m) in sorted(files.items())]
        unique: dict[str, initramfs.CpioEntry] = {}
        for e in entries:  # the first of each path, in order (parents before children)
            unique.setdefault(e.path, e)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(initramfs.build_newc(unique.values()))
        tmp.replace(out)
        for stale in out.parent.glob("l1-linux-l2-*.cpio"):  # ~90 MB each: keep one
            if stale != out:
                stale.unlink(missing_ok=True)
    assets = LinuxL2Assets(
        qemu_package=qemu.name,
        qemu_version=qemu.version,
        libraries=libraries,
        interpreter=interp,
        kernel_release=l1.kernel_release,
        kernel_version=l1.kernel_version,
        modules=order,
        l1_kernel=l1.image,
        l1_initramfs=str(out),
        l2_initramfs=f"{L2_INITRD} in the L1 initramfs",
        scenarios=tuple(cfg.scenario),
        built_at=time.time(),
    )
    (base / MANIFEST).write_text(json.dumps(asdict(assets), indent=1) + "\n")
    return assets

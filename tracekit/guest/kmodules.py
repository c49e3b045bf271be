"""Kernel modules to load, dependencies first, from the modules' own dependency data (pure).

``modules.dep`` (written by ``depmod``; format in ``man 5 modules.dep``): one line per
module, ``path: dep1 dep2 ...``, paths relative to ``/lib/modules/RELEASE``. Debian's
kernel packages do not ship it (``depmod`` runs in their postinst), so
:func:`deps_from_modinfo` builds the same map from what ``depmod`` reads: each module's
``.modinfo`` section, NUL-separated ``key=value`` strings whose ``depends=`` names the
modules it needs, comma-separated (``scripts/mod/modpost.c`` writes it). A module's
name is its file name without ``.ko`` (or ``.ko.xz``/``.ko.zst``...) with ``-`` read as
``_``, as ``modprobe`` does (``kmod``'s ``modname_normalize``). ``depmod`` lists every
dependency, direct and indirect; the order to load is found here by a depth-first walk
(each module after all it depends on), not trusted from the line's order.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence

from tracekit.errors import GuestBuildError

__all__ = ["deps_from_modinfo", "load_order", "modinfo", "module_name", "parse_modules_dep"]


def module_name(path: str) -> str:
    """``kernel/drivers/block/virtio_blk.ko`` -> ``virtio_blk``."""
    base = posixpath.basename(path)
    base = base[: base.index(".ko")] if ".ko" in base else base
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (path, dependency paths) for every line of ``modules.dep``."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise GuestBuildError(
                f"modules.dep line without a colon: {line[:80]!r}",
                hint="the kernel package's modules.dep is damaged",
            )
        out[module_name(path)] = (path.strip(), tuple(deps.split()))
    return out


def modinfo(section: bytes) -> dict[str, str]:
    """A ``.modinfo`` section's ``key=value`` strings (the first value of a repeated key)."""
    out: dict[str, str] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def deps_from_modinfo(
    infos: Mapping[str, Mapping[str, str]],
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``parse_modules_dep``'s map from path -> ``modinfo`` of every module in the tree.

    A ``depends=`` name no module of the tree has is kept as a path of its own, so
    :func:`load_order` reports it by name.
    """
    by_name = {module_name(path): path for path in infos}
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path, info in infos.items():
        names = [d.replace("-", "_") for d in info.get("depends", "").split(",") if d]
        out[module_name(path)] = (path, tuple(by_name.get(n, f"{n}.ko") for n in names))
    return out


def load_order(
    wanted: Sequence[str], deps: Mapping[str, tuple[str, tuple[str, ...]]]
) -> tuple[str, ...]:
    """Paths of ``wanted`` and everything they need, each once, dependencies first."""
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise GuestBuildError(f"modules.dep has a cycle: {' -> '.join((*chain, name))}")
        entry = deps.get(name)
        if entry is None:
            raise GuestBuildError(
                f"module {name!r} is not in the kernel's modules.dep",
                hint="it may be built in (=y) or absent: check the kernel config and"
                " `modules` in configs/linux-l2.toml",
            )
        path, needs = entry
        for dep in needs:
            visit(by_path.get(dep, module_name(dep)), (*chain, name))
        seen.add(name)
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return tuple(order)

"""Which probe set fits a kernel: chosen by the kernel's own version, never drifted into.

A probe set (``configs/probes/*.toml``) names the kernel family it was written for in its
``kernel`` field (``"6.1"``). Recording a kernel of another family with it would resolve
some symbols and silently misread others (struct offsets, prologues, exit codes), so a
mismatch is refused with the kernel, the sets that exist and the way to choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracekit.config import CONFIG_DIR, load_toml
from tracekit.errors import ConfigError

__all__ = ["KernelMismatch", "ProbeSetInfo", "available_probe_sets", "choose_probe_set"]


class KernelMismatch(ConfigError):
    """The kernel to record is not the family the probe set was written for."""


@dataclass(frozen=True)
class ProbeSetInfo:
    name: str
    kernel: str
    path: Path


def available_probe_sets(config_dir: Path | None = None) -> list[ProbeSetInfo]:
    """Every probe set in ``configs/probes/`` with the kernel family it is written for."""
    base = (config_dir or CONFIG_DIR) / "probes"
    sets = []
    for path in sorted(base.glob("*.toml")):
        kernel = load_toml(path).get("kernel")
        sets.append(ProbeSetInfo(path.stem, str(kernel or "?"), path))
    return sets


def _listing(sets: list[ProbeSetInfo]) -> str:
    return ", ".join(f"{s.name} (kernel {s.kernel})" for s in sets) or "none"


def choose_probe_set(
    kernel_release: str,
    kernel_family: str,
    explicit: str | None = None,
    config_dir: Path | None = None,
) -> str:
    """The probe set to record ``kernel_release`` with: ``explicit`` (a name or a .toml path)
    if given, else the one written for its family; a mismatch is a KernelMismatch."""
    sets = available_probe_sets(config_dir)
    if explicit is None:
        match = [s for s in sets if s.kernel == kernel_family]
        if not match:
            raise KernelMismatch(
                f"kernel {kernel_release} (family {kernel_family or '?'}) has no probe set:"
                f" probe sets exist for {_listing(sets)}",
                hint="run `tracekit guest build --force` for the pinned Debian kernel,"
                " or pass `--probes FILE.toml` written for this kernel",
            )
        return match[0].name
    path = Path(explicit)
    if path.suffix == ".toml":
        from tracekit.probes.spec import load_probe_set

        kernel = load_probe_set(str(path)).kernel  # validates the whole file first
        name = str(path)
    else:
        known = {s.name: s for s in sets}
        if explicit not in known:
            raise ConfigError(
                f"unknown probe set {explicit!r}",
                hint=f"choose one of {_listing(sets)} or pass a .toml path",
            )
        kernel, name = known[explicit].kernel, explicit
    if kernel != kernel_family:
        raise KernelMismatch(
            f"probe set {name} is written for kernel {kernel}, the kernel to record is"
            f" {kernel_release} (family {kernel_family or '?'})",
            hint=f"probe sets: {_listing(sets)}; choose one with --probes, or rebuild the"
            " kernel with `tracekit guest build --force` / `--kernel IMAGE`",
        )
    return name

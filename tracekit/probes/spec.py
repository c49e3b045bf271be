"""Probe sets (``configs/probes/*.toml``): which kernel points to watch, and what to read.

Kernel-version knowledge lives in those files; this module only loads and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tracekit.config import CONFIG_DIR, from_mapping, load_toml
from tracekit.errors import ConfigError

__all__ = ["PHASES", "ProbeSet", "ProbeSpec", "load_probe_set"]

#: The mission's phases, in order (docs/phases.md).
PHASES = ("A", "B", "C", "D", "E", "F")

Phase = Literal["A", "B", "C", "D", "E", "F"]


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: a kernel point, the phase it bounds, and the values it captures."""

    name: str
    symbol: str
    phase: Phase
    #: What the phase model uses it for (queue, kick, guest_exit, handle_exit, flush, ...).
    role: str
    mode: Literal["stop", "timing"]
    #: Byte offset from the symbol (e.g. a vector table entry).
    offset: int = 0
    #: Probe the instruction after the first ``bl`` to this symbol inside ``symbol``.
    after_call: str = ""
    #: Probe the first instruction of this kind inside ``symbol`` (only "eret").
    instruction: str = ""
    fallbacks: tuple[str, ...] = ()
    #: Name -> capture expression (see configs/probes/linux-6.1.toml).
    capture: dict[str, str] = field(default_factory=dict)
    #: A required probe that cannot be resolved is an error.
    required: bool = False


@dataclass(frozen=True)
class _ProbeFile:
    kernel: str
    description: str
    probe: tuple[dict[str, object], ...]


@dataclass(frozen=True)
class ProbeSet:
    kernel: str
    description: str
    probes: tuple[ProbeSpec, ...]
    source: str


def load_probe_set(name_or_path: str = "linux-6.1", config_dir: Path | None = None) -> ProbeSet:
    base = config_dir or CONFIG_DIR
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = base / "probes" / f"{name_or_path}.toml"
        if not path.exists():
            known = sorted(p.stem for p in (base / "probes").glob("*.toml"))
            raise ConfigError(
                f"unknown probe set {name_or_path!r}",
                hint=f"choose one of {', '.join(known)} or pass a .toml path",
            )
    raw = from_mapping(_ProbeFile, load_toml(path), str(path))
    probes = tuple(
        from_mapping(ProbeSpec, body, f"{path}: probe[{i}]") for i, body in enumerate(raw.probe)
    )
    names = [p.name for p in probes]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{path}: probe names must be unique, repeated: {', '.join(dupes)}")
    for p in probes:
        if p.instruction not in ("", "eret"):
            raise ConfigError(
                f"{path}: probe {p.name}: instruction {p.instruction!r} unknown",
                hint='only "eret" is supported',
            )
        if p.mode == "timing" and p.capture:
            raise ConfigError(
                f"{path}: probe {p.name} captures values but is mode 'timing'",
                hint="values need mode = 'stop' (a GDB breakpoint)",
            )
    return ProbeSet(raw.kernel, raw.description, probes, str(path))

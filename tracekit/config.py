"""Configuration as data: TOML files in ``configs/`` loaded into typed, frozen objects.

Every loader is strict: an unknown key, a missing key or a value of the wrong type is a
:class:`~tracekit.errors.ConfigError` that names the file, the key and the fix ("did you
mean ...?"). Objects are passed explicitly; nothing here is a module-level singleton.

One module on purpose, though over 400 lines: it is the one strict converter
(:func:`from_mapping`) and, section by section, the small typed schema and loader of each
file in ``configs/`` (machines, guest, scenarios, tools, study-note names). Every schema
is a few dozen lines that only make sense next to the converter's rules, and callers
import them all from ``tracekit.config``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tracekit.errors import ConfigError, ScenarioError, did_you_mean

__all__ = [
    "CONFIG_DIR",
    "REPO_ROOT",
    "GuestConfig",
    "LinuxL2Config",
    "LinuxL2Scenario",
    "MachineProfile",
    "QemuPluginApis",
    "ScenarioSpec",
    "ToolPaths",
    "cache_dir",
    "from_mapping",
    "load_guest_config",
    "load_linux_l2_config",
    "load_machine",
    "load_qemu_plugin_apis",
    "load_scenarios",
    "load_toml",
    "load_tools",
    "named_config",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("TRACEKIT_CONFIG_DIR", REPO_ROOT / "configs"))

T = TypeVar("T")


def cache_dir() -> Path:
    """Where built guest assets live: ``$TRACEKIT_CACHE`` or ``~/.cache/tracekit``.

    Outside the work tree so that a fresh clone (as CI makes) reuses what an earlier run
    built on the same machine; every entry is keyed by the hash of its inputs.
    """
    env = os.environ.get("TRACEKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tracekit"


def load_toml(path: Path) -> dict[str, Any]:
    """Read one TOML file, turning every failure into a one-line ConfigError."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", hint="check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", hint="fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where} is {value!r}", hint=f"expected one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} should be a list, got {type(value).__name__}")
        item_tp = args[0] if args else Any
        return tuple(_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} should be a table, got {type(value).__name__}")
        ktp, vtp = args if args else (Any, Any)
        return {
            _convert(k, ktp, f"{where} key"): _convert(v, vtp, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} should be a table, got {type(value).__name__}")
        return from_mapping(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} should be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} should be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} should be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} should be a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where} should be {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build the frozen dataclass ``cls`` from ``data``, rejecting unknown or missing keys."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = did_you_mean(key, fields, f"known keys: {', '.join(fields)}")
            raise ConfigError(f"{where}: unknown key {key!r}", hint=hint)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}", hint="add it to the file")
    return cls(**kwargs)


# --------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class MachineProfile:
    """How QEMU is started: the emulated board, L1's memory/CPUs and kernel command line."""

    name: str
    description: str
    #: ``vhe`` (L1's KVM runs at EL2 with the host kernel) or ``nvhe`` (host at EL1).
    kvm_mode: typing.Literal["vhe", "nvhe"]
    memory_mb: int
    cpus: int
    machine: str
    cpu: str
    #: Kernel command line, one argument per entry.
    cmdline: tuple[str, ...]
    #: ``-icount`` option value, or "" for multi-threaded TCG (see docs/timebase.md).
    icount: str = ""
    #: Extra QEMU arguments, appended verbatim.
    extra_args: tuple[str, ...] = ()
    #: Seconds L1 may take from launch to the init's ready line.
    boot_timeout_s: int = 120


def named_config(
    kind_dir: str, name_or_path: str, what: str, config_dir: Path | None = None
) -> Path:
    """``configs/KIND_DIR/NAME.toml`` for a name, or the path itself for a ``.toml`` path;
    an unknown name is a ConfigError listing the known ones."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        return path
    base = (config_dir or CONFIG_DIR) / kind_dir
    path = base / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in base.glob("*.toml"))
        raise ConfigError(
            f"unknown {what} {name_or_path!r}",
            hint=f"choose one of {', '.join(known)} or pass a .toml path",
        )
    return path


def load_machine(name_or_path: str, config_dir: Path | None = None) -> MachineProfile:
    """Load ``configs/machines/NAME.toml`` (or a path to a TOML file)."""
    path = named_config("machines", name_or_path, "machine profile", config_dir)
    return from_mapping(MachineProfile, load_toml(path), str(path))


# --------------------------------------------------------------------------- guest


@dataclass(frozen=True)
class KernelSource:
    """Where the L1 kernel comes from: a Debian package, resolved at build time."""

    #: Debian metapackage that depends on the current ABI's image package.
    package: str
    architecture: str


@dataclass(frozen=True)
class KernelChoice:
    """Another pinned kernel family, fetched and cached beside the default on request
    (``guest build --extra-kernel FAMILY``) and used with ``--kernel FAMILY``."""

    #: The Debian suite it comes from (e.g. bookworm-backports for 6.12 on Debian 12).
    suite: str
    #: Its metapackage there.
    package: str


@dataclass(frozen=True)
class BusyboxSource:
    package: str
    architecture: str


@dataclass(frozen=True)
class GuestConfig:
    """The built-in L1 + L2 target (see ``configs/guest.toml``)."""

    #: The Debian suite every guest package comes from, whatever the host runs: it pins
    #: the L1 kernel family a probe set exists for (see tracekit/guest/debian.py).
    debian_suite: str
    kernel: KernelSource
    busybox: BusyboxSource
    #: Source directory of the L2 VMM and payload (relative to the repository).
    vmm_source: str
    #: Source of L1's /init (relative to the repository).
    init_source: str
    #: Family ("6.12") -> where that kernel comes from (configs/guest.toml [kernels]).
    kernels: dict[str, KernelChoice] = field(default_factory=dict)


def load_guest_config(path: Path | None = None) -> GuestConfig:
    p = path or CONFIG_DIR / "guest.toml"
    return from_mapping(GuestConfig, load_toml(p), str(p))


# --------------------------------------------------------------------------- Linux L2


@dataclass(frozen=True)
class LinuxL2Scenario:
    """One Linux-L2 scenario: the inner QEMU's devices (configs/linux-l2.toml)."""

    name: str
    description: str
    devices: tuple[str, ...]
    #: Interrupt classes L2's devices, timer and IPIs make (what `record` checks).
    classes: tuple[str, ...] = ("hardware", "virtual", "ipi")


@dataclass(frozen=True)
class LinuxL2Config:
    """The opt-in Linux L2 stack of issue 15 (see ``configs/linux-l2.toml``)."""

    qemu_package: str
    qemu_binary: str
    modules: tuple[str, ...]
    l2_cmdline: tuple[str, ...]
    disk_mb: int
    timeout_s: int
    inner_args: tuple[str, ...]
    scenario: dict[str, LinuxL2Scenario]

    def get(self, name: str) -> LinuxL2Scenario:
        try:
            return self.scenario[name]
        except KeyError:
            raise ScenarioError(
                f"unknown Linux L2 scenario {name!r} (known: {', '.join(self.scenario)})",
                hint=did_you_mean(name, self.scenario, None),
            ) from None


def load_linux_l2_config(path: Path | None = None) -> LinuxL2Config:
    p = path or CONFIG_DIR / "linux-l2.toml"
    raw = dict(load_toml(p))
    scenarios = raw.get("scenario", {})
    if isinstance(scenarios, Mapping):
        raw["scenario"] = {
            name: {"name": name, **body} if isinstance(body, Mapping) else body
            for name, body in scenarios.items()
        }
    return from_mapping(LinuxL2Config, raw, str(p))


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class ScenarioSpec:
    """One L2 workload scenario (see ``configs/scenarios.toml``)."""

    name: str
    description: str
    default_count: int
    min_vcpus: int
    #: Interrupt classes the scenario produces (hardware, virtual, ipi).
    classes: tuple[str, ...]
    #: Exception kinds the scenario produces (hvc, wfi, mmio, sysreg).
    exceptions: tuple[str, ...] = ()
    #: Seconds of L1 time the scenario may take per interrupt counted, before it is a hang.
    timeout_s: int = 300
    #: What runs in L2: "vmm" (guests/vmm, the bare-metal payload) or "linux-l2" (a Linux
    #: guest under Debian's QEMU in L1, configs/linux-l2.toml).
    guest: str = "vmm"

    @property
    def linux_l2(self) -> bool:
        return self.guest == "linux-l2"


#: Source kinds a chain can have (tracekit/model/chains.py SOURCE_KINDS).
SOURCE_KIND_NAMES = ("timer", "irqfd", "irq_line", "sgi")


@dataclass(frozen=True)
class _ScenarioFile:
    default: str
    scenario: dict[str, dict[str, Any]] = field(default_factory=dict)
    workload_sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScenarioCatalog:
    default: str
    scenarios: Mapping[str, ScenarioSpec]
    #: The workload's source names -> source kinds (only to check chains against).
    workload_sources: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> ScenarioSpec:
        try:
            return self.scenarios[name]
        except KeyError:
            raise ScenarioError(
                f"unknown scenario {name!r} (known: {', '.join(self.scenarios)})",
                hint=did_you_mean(name, self.scenarios, None),
            ) from None


def load_scenarios(path: Path | None = None) -> ScenarioCatalog:
    p = path or CONFIG_DIR / "scenarios.toml"
    raw = from_mapping(_ScenarioFile, load_toml(p), str(p))
    specs = {
        name: from_mapping(ScenarioSpec, {"name": name, **body}, f"{p}: scenario.{name}")
        for name, body in raw.scenario.items()
    }
    if raw.default not in specs:
        raise ConfigError(f"{p}: default scenario {raw.default!r} is not defined")
    for name, kind in raw.workload_sources.items():
        if kind not in SOURCE_KIND_NAMES:
            raise ConfigError(
                f"{p}: workload_sources.{name} = {kind!r} is not a source kind",
                hint=did_you_mean(kind, SOURCE_KIND_NAMES, f"use one of {SOURCE_KIND_NAMES}"),
            )
    linux = load_linux_l2_config()
    for name, sc in linux.scenario.items():
        if name in specs:
            raise ConfigError(f"{p}: scenario {name!r} is also a Linux L2 scenario")
        # One Linux run is one window (count 1); L2's CPUs are the inner QEMU's -smp.
        # timeout_s × 10 is the run's deadline (record/run.py): the L2 timeout's.
        specs[name] = ScenarioSpec(
            name, sc.description, 1, 1, sc.classes, (), -(-linux.timeout_s // 10), "linux-l2"
        )
    return ScenarioCatalog(raw.default, specs, raw.workload_sources)


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class ToolPaths:
    """External programs; each may be overridden by ``TRACEKIT_<NAME>`` in the environment."""

    qemu: str
    gdb: str
    cross_gcc: str
    host_gcc: str
    cpio: str
    apt_get: str
    apt_cache: str
    addr2line: str
    dpkg_deb: str


#: The table of ``tools.toml`` that is not a program: QEMU version -> TCG plugin API.
_PLUGIN_API_TABLE = "qemu_plugin_api"


def load_tools(path: Path | None = None, env: Mapping[str, str] | None = None) -> ToolPaths:
    p = path or CONFIG_DIR / "tools.toml"
    data = load_toml(p)
    data.pop(_PLUGIN_API_TABLE, None)  # read by load_qemu_plugin_apis
    tools = from_mapping(ToolPaths, data, str(p))
    environ = os.environ if env is None else env
    overrides = {
        f.name: environ[f"TRACEKIT_{f.name.upper()}"]
        for f in dataclasses.fields(ToolPaths)
        if f"TRACEKIT_{f.name.upper()}" in environ
    }
    return dataclasses.replace(tools, **overrides)


@dataclass(frozen=True)
class QemuPluginApis:
    """Which TCG plugin API each QEMU release speaks (``[qemu_plugin_api]`` in tools.toml).

    Keys are ``MAJOR.MINOR`` release strings ("7.2"), values the plugin API version a
    plugin must be built for to load into that QEMU (``qemu_plugin_version``).
    """

    by_release: Mapping[str, int]

    def api_for(self, release: str) -> int | None:
        return self.by_release.get(release)


def load_qemu_plugin_apis(path: Path | None = None) -> QemuPluginApis:
    p = path or CONFIG_DIR / "tools.toml"
    where = f"{p}: {_PLUGIN_API_TABLE}"
    data = load_toml(p)
    if _PLUGIN_API_TABLE not in data:
        raise ConfigError(
            f"{p}: missing table [{_PLUGIN_API_TABLE}]",
            hint='add it, e.g. [qemu_plugin_api] "7.2" = 1',
        )
    table = _convert(data[_PLUGIN_API_TABLE], dict[str, int], where)
    for release, api in table.items():
        parts = release.split(".")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise ConfigError(
                f"{where}: key {release!r} is not a MAJOR.MINOR QEMU release",
                hint='write it like "10.0"',
            )
        if api < 1:
            raise ConfigError(f"{where}.{release} should be a positive integer, got {api}")
    return QemuPluginApis(by_release=types.MappingProxyType(table))


# --------------------------------------------------------------------------- study-note names


@dataclass(frozen=True)
class _OriginalNames:
    names: dict[str, str]


def load_original_names(path: Path | None = None) -> dict[str, str]:
    """Probe (or step) name -> its name in the 32-bit study note (configs/original-names.toml).

    Every key must be a probe of some probe set or a step kind (``lr_write``, ``ack``): a
    typo is an error with "did you mean", not a name silently never shown.
    """
    p = path or CONFIG_DIR / "original-names.toml"
    names = from_mapping(_OriginalNames, load_toml(p), str(p)).names
    known = {"lr_write", "ack"}
    for probes in (CONFIG_DIR / "probes").glob("*.toml"):
        known |= {str(b.get("name")) for b in load_toml(probes).get("probe", [])}
    for key in names:
        if key not in known:
            raise ConfigError(
                f"{p}: {key!r} is not a probe name or step",
                hint=did_you_mean(key, sorted(known), "use a probe set's probe name"),
            )
    return names

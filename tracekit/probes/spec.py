"""Probe sets (``configs/probes/*.toml``): which kernel points to watch, and what to read.

Kernel-version knowledge lives in those files; this module only loads and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tracekit.config import from_mapping, load_toml, named_config
from tracekit.errors import ConfigError, did_you_mean
from tracekit.kernel.alternatives import CpuCaps
from tracekit.model.vocabulary import PROBE_ROLES, Role, Value
from tracekit.probes.capture import members_of

__all__ = ["INFERENCE_RULES", "ExitDecoder", "ProbeSet", "ProbeSpec", "load_probe_set"]


Phase = Literal["A", "B", "C", "D", "E", "F"]

#: Rules that give a probe's values from what the same L1 CPU did before, without a
#: debugger stop (implemented and explained in tracekit/model/context.py).
INFERENCE_RULES = ("resident_vcpu", "queued_target", "exit_vector", "vcpu_by_pointer")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: a kernel point, the phase it bounds, and the values it captures."""

    name: str
    symbol: str
    phase: Phase
    #: What the phase model uses it for (queue, kick, guest_exit, handle_exit, flush, ...).
    role: Role
    mode: Literal["stop", "timing"]
    #: Byte offset from the symbol (e.g. a vector table entry).
    offset: int = 0
    #: Probe the instruction after the first ``bl`` to this symbol inside ``symbol``.
    after_call: str = ""
    #: Probe the first instruction of this kind inside ``symbol`` (only "eret").
    instruction: str = ""
    fallbacks: tuple[str, ...] = ()
    #: Value name (a ``Value``) -> capture expression (see configs/probes/linux-6.1.toml).
    capture: dict[str, str] = field(default_factory=dict)
    #: A required probe that cannot be resolved is an error.
    required: bool = False
    #: KVM modes the probe applies to (its code runs only in those).
    kvm_modes: tuple[str, ...] = ("vhe", "nvhe")
    #: nVHE hyp code: runs at an EL2 virtual address, translated at run time.
    hyp: bool = False
    #: Value name -> inference rule (INFERENCE_RULES): the value comes from context
    #: instead of a stop. A ``timing`` probe may keep ``capture`` for the same names:
    #: ``record --read-values`` then stops there and checks the inference.
    infer: dict[str, str] = field(default_factory=dict)
    #: Constant values every execution of this probe implies (e.g. the exit code a hyp
    #: vector entry sets).
    implies: dict[str, int] = field(default_factory=dict)
    #: Value name -> argument register (``x0``..``x30``) whose value at entry is
    #: recovered stop-free from the first memory access based on it (probes/pointer.py).
    pointer: dict[str, str] = field(default_factory=dict)
    #: Record each activation's frame record address stop-free (``frame`` value), so a
    #: queue whose call stack holds this function names the activation that queued it
    #: (docs/phases.md, "Sources").
    frame: bool = False

    def members(self) -> set[str]:
        """The ``struct.member`` paths its captures read (their offsets come from BTF)."""
        return {m for expr in self.capture.values() for m in members_of(expr)}

    def stops(self, read_values: bool = False) -> bool:
        """Whether this probe is a debugger stop (``read_values``: also inferred ones)."""
        return self.mode == "stop" or (read_values and bool(self.capture))


@dataclass(frozen=True)
class _CpuCapsFile:
    #: cpucap number (this kernel's arch/arm64/tools/cpucaps order) -> name.
    applied: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _ProbeFile:
    kernel: str
    description: str
    probe: tuple[dict[str, object], ...]
    exit_codes: dict[str, str] = field(default_factory=dict)
    ec_handlers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: nVHE: the symbol whose EL2 address VBAR_EL2 holds while the host runs (the hyp
    #: probes move by VBAR_EL2 minus its kernel address, docs/phases.md).
    hyp_host_vector: str = "__kvm_nvhe___kvm_hyp_host_vector"
    cpucaps: _CpuCapsFile | None = None


@dataclass(frozen=True)
class ExitDecoder:
    """Names for exit codes and ESR exception classes, from the probe set (pure)."""

    exit_codes: dict[int, str] = field(default_factory=dict)
    ec_handlers: dict[int, tuple[str, str]] = field(default_factory=dict)

    def code_name(self, code: int | None) -> str:
        if code is None:
            return "?"
        base = code & ~(1 << 31)  # ARM_EXCEPTION_CODE(): bit 31 flags a pending SError
        return self.exit_codes.get(base, f"code {base:#x}")

    def code(self, name: str) -> int | None:
        """The exit code with this name (e.g. "IRQ"), if the table has it."""
        return next((code for code, known in self.exit_codes.items() if known == name), None)

    def ec_of(self, esr: int | None) -> int | None:
        return None if esr is None else (esr >> 26) & 0x3F

    def ec_name(self, esr: int | None) -> str:
        ec = self.ec_of(esr)
        if ec is None:
            return "?"
        return self.ec_handlers.get(ec, (f"EC {ec:#04x}", ""))[0]

    def handler(self, esr: int | None) -> str:
        ec = self.ec_of(esr)
        if ec is None:
            return "?"
        return self.ec_handlers.get(ec, ("", "kvm_handle_unknown_ec"))[1]

    def describe(self, code: int | None, esr: int | None) -> tuple[str, str, str]:
        """(exit code name, EC name or "", handler) for one exit."""
        name = self.code_name(code)
        if name != "TRAP":
            return name, "", "handle_exit" if name == "IRQ" else ""
        return name, self.ec_name(esr), self.handler(esr)


@dataclass(frozen=True)
class ProbeSet:
    kernel: str
    description: str
    probes: tuple[ProbeSpec, ...]
    source: str
    decoder: ExitDecoder = field(default_factory=ExitDecoder)
    #: What boot-time alternatives patching does on tracekit's machines ([cpucaps]).
    cpucaps: CpuCaps = field(default_factory=CpuCaps)
    #: nVHE: the symbol VBAR_EL2 points at while the host runs (_ProbeFile).
    hyp_host_vector: str = "__kvm_nvhe___kvm_hyp_host_vector"

    def btf_members(self) -> list[str]:
        """Every struct member the set's captures read, for the kernel's BTF layout."""
        return sorted({m for p in self.probes for m in p.members()})


def _known(word: str, known: tuple[str, ...], problem: str) -> None:
    """Refuse a word the vocabulary does not have, suggesting the closest one."""
    if word not in known:
        raise ConfigError(problem, hint=did_you_mean(word, known, f"use one of {', '.join(known)}"))


_PROBE_ROLES = tuple(r.value for r in PROBE_ROLES)
_VALUES = tuple(v.value for v in Value)


def _probe(body: dict[str, object], path: Path, i: int) -> ProbeSpec:
    """One ``[[probe]]``, its role and value names checked against the model's words."""
    role = body.get("role")
    if isinstance(role, str):  # anything else: from_mapping names the type it wants
        problem = f"{path}: probe {body.get('name')}: role {role!r} is not one the model knows"
        _known(role, _PROBE_ROLES, problem)
        body = {**body, "role": Role(role)}
    spec = from_mapping(ProbeSpec, body, f"{path}: probe[{i}]")
    for table, values in (
        ("capture", spec.capture),
        ("infer", spec.infer),
        ("implies", spec.implies),
        ("pointer", spec.pointer),
    ):
        for value in values:
            problem = f"{path}: probe {spec.name}: {table}.{value} is not a value the model knows"
            _known(value, _VALUES, problem)
    return spec


def load_probe_set(name_or_path: str = "linux-6.1", config_dir: Path | None = None) -> ProbeSet:
    path = named_config("probes", name_or_path, "probe set", config_dir)
    raw = from_mapping(_ProbeFile, load_toml(path), str(path))
    probes = tuple(_probe(body, path, i) for i, body in enumerate(raw.probe))
    names = [p.name for p in probes]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{path}: probe names must be unique, repeated: {', '.join(dupes)}")
    for p in probes:
        if p.instruction not in ("", "eret", "after-hvc"):
            raise ConfigError(
                f"{path}: probe {p.name}: instruction {p.instruction!r} unknown",
                hint='use "eret" or "after-hvc"',
            )
        for mode in p.kvm_modes:
            if mode not in ("vhe", "nvhe"):
                raise ConfigError(
                    f"{path}: probe {p.name}: kvm mode {mode!r} unknown",
                    hint='use "vhe" and/or "nvhe"',
                )
        unread = (
            sorted(set(p.capture) - set(p.infer) - set(p.pointer)) if p.mode == "timing" else []
        )
        if unread:
            raise ConfigError(
                f"{path}: probe {p.name} captures {', '.join(unread)} but is mode 'timing'"
                " and does not infer them",
                hint="values need mode = 'stop' (a GDB breakpoint) or an infer rule",
            )
        for value, reg in p.pointer.items():
            if reg not in {f"x{i}" for i in range(31)} or p.hyp:
                raise ConfigError(
                    f"{path}: probe {p.name}: pointer.{value} = {reg!r} is not usable",
                    hint="name an argument register x0..x30 of a host (non-hyp) probe",
                )
        if p.frame and (p.hyp or p.offset or p.after_call or p.instruction):
            raise ConfigError(
                f"{path}: probe {p.name}: frame = true needs a host function entry",
                hint="use it on probes at a function's symbol (no offset, not hyp)",
            )
        for value, rule in p.infer.items():
            if rule not in INFERENCE_RULES:
                raise ConfigError(
                    f"{path}: probe {p.name}: infer.{value} rule {rule!r} unknown",
                    hint=f"use one of {', '.join(INFERENCE_RULES)}",
                )
    try:
        decoder = ExitDecoder(
            {int(k, 0): v for k, v in raw.exit_codes.items()},
            {int(k, 0): (v[0], v[1]) for k, v in raw.ec_handlers.items()},
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"{path}: bad [exit_codes]/[ec_handlers] entry ({exc})",
            hint="keys are integers (0x..), handlers are [name, function]",
        ) from None
    caps = raw.cpucaps or _CpuCapsFile()
    try:
        cpucaps = CpuCaps(
            {int(k, 0): v for k, v in caps.applied.items()},
            {int(k, 0): v for k, v in caps.absent.items()},
        )
    except ValueError as exc:
        raise ConfigError(
            f"{path}: bad [cpucaps] entry ({exc})", hint="keys are cpucap numbers"
        ) from None
    if set(cpucaps.applied) & set(cpucaps.absent):
        raise ConfigError(f"{path}: [cpucaps] lists a cpucap as both applied and absent")
    return ProbeSet(
        raw.kernel, raw.description, probes, str(path), decoder, cpucaps, raw.hyp_host_vector
    )

"""The QEMU command line, built in one place with a reason for every flag (pure)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.config import MachineProfile
from tracekit.vm.runtime import RuntimeDir

__all__ = ["LaunchSpec", "build_argv"]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything that varies between launches of the same machine profile."""

    qemu: str
    kernel: Path
    initrd: Path
    #: Extra kernel command-line arguments (e.g. ``tracekit.scenario=mixed``).
    kernel_args: tuple[str, ...] = ()
    #: Start with the CPUs stopped (``-S``) so probes can be armed first.
    paused: bool = False
    qmp: bool = True
    gdb: bool = False
    #: QEMU trace event patterns to enable from the start (log backend, into qemu.log).
    trace_events: tuple[str, ...] = ()
    #: ``-d`` log items (e.g. ``int``), also into qemu.log.
    log_items: tuple[str, ...] = ()
    #: TCG plugin shared object and its arguments.
    plugin: Path | None = None
    plugin_args: tuple[str, ...] = field(default_factory=tuple)
    #: Where ``-D`` writes (default: qemu.log in the runtime directory).
    log_file: Path | None = None


def build_argv(profile: MachineProfile, spec: LaunchSpec, runtime: RuntimeDir) -> list[str]:
    append = " ".join((*profile.cmdline, *spec.kernel_args))
    # fmt: off
    argv = [
        spec.qemu,
        "-machine", profile.machine,          # virt + GICv3 + EL2 (nested virtualization)
        "-cpu", profile.cpu,                  # max: FEAT_VHE, GICv3 sysregs, EL2
        "-smp", str(profile.cpus),
        "-m", str(profile.memory_mb),
        "-nodefaults",                        # no default devices: only what we ask for
        "-display", "none",
        "-serial", "stdio",                   # L1 console on QEMU's stdin/stdout pipes
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", append,
        "-no-reboot",                         # a guest reboot or panic ends QEMU
    ]
    # fmt: on
    if profile.icount:
        argv += ["-icount", profile.icount]  # L1's clock counts instructions (timebase.md)
    if spec.paused:
        argv += ["-S"]
    if spec.qmp:
        argv += ["-qmp", f"unix:{runtime.qmp_socket},server=on,wait=off"]
    if spec.gdb:
        # A unix socket, never "-s" (which is tcp::1234 on every interface).
        argv += ["-gdb", f"unix:{runtime.gdb_socket},server=on,wait=off"]
    if spec.trace_events or spec.log_items or spec.plugin:
        argv += ["-D", str(spec.log_file or runtime.qemu_log)]
    if spec.trace_events:
        argv += ["-msg", "timestamp=on"]
        for pattern in spec.trace_events:
            argv += ["-trace", pattern]
    if spec.log_items or spec.plugin:
        items = list(spec.log_items) + (["plugin"] if spec.plugin else [])
        argv += ["-d", ",".join(items)]
    if spec.plugin:
        argv += ["-plugin", ",".join([str(spec.plugin), *spec.plugin_args])]
    argv += list(profile.extra_args)
    return argv


def shell_quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)

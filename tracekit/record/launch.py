"""Step 2, launch: QEMU paused (``-S``) with QMP and the GDB stub on unix sockets in a
0700 runtime directory and the timebase plugin told every probe PC; then QMP attached and
the GIC trace events switched on."""

from __future__ import annotations

from pathlib import Path

from tracekit.errors import VMError
from tracekit.guest.assets import GuestAssets
from tracekit.guest.runner import scenario_kernel_args
from tracekit.record.metadata import RunFacts
from tracekit.record.options import RecordOptions
from tracekit.record.peers import Monitor, StampStream, VmProcess
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.runtime import RuntimeDir

__all__ = ["GDBSTUB_TRACE_EVENTS", "GIC_TRACE_EVENTS", "attach_monitor", "qemu_argv"]

#: QEMU GICv3 trace events recorded as the hardware-side view (hw/intc/trace-events).
GIC_TRACE_EVENTS = (
    "gicv3_ich_lr_write",
    "gicv3_icv_iar_read",
    "gicv3_icv_eoir_write",
    "gicv3_icc_generate_sgi",
)
#: QEMU's own record of each debugger stop, in host time (-trace + -msg timestamp=on):
#: how long the VM stays stopped per breakpoint (docs/performance.md).
GDBSTUB_TRACE_EVENTS = ("gdbstub_hit_break", "gdbstub_op_continue_cpu")


def qemu_argv(
    opts: RecordOptions,
    assets: GuestAssets,
    qemu: str,
    plugin: Path,
    stamps: StampStream,
    runtime: RuntimeDir,
) -> list[str]:
    spec = LaunchSpec(
        qemu=qemu,
        kernel=assets.image_path,
        initrd=opts.initrd or assets.initramfs_path,
        kernel_args=(*scenario_kernel_args(opts.request), *opts.extra_kernel_args),
        paused=True,
        qmp=True,
        gdb=True,
        # Exception records: the guest's syndrome at each exit without a stop.
        log_items=("int",),
        trace_events=GDBSTUB_TRACE_EVENTS,
        plugin=plugin,
        plugin_args=(f"probes={stamps.probe_file}",),
        log_file=stamps.log_file,
    )
    return build_argv(opts.profile, spec, runtime)


def attach_monitor(vm: VmProcess, monitor: Monitor, facts: RunFacts) -> None:
    """Connect QMP and switch the GIC trace events on (QEMU is still paused)."""
    try:
        monitor.connect(alive=lambda: vm.poll() is None)
    except VMError as exc:
        raise vm.exited_during_startup(exc) from None
    facts.qemu_version = monitor.version
    for event in GIC_TRACE_EVENTS:
        monitor.execute("trace-event-set-state", {"name": event, "enable": True})
    facts.cpus = monitor.execute("query-cpus-fast")

"""Real QEMU + real GDB, L1 only: sockets, QMP, the stub, kernel memory, the plugin."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.sockets import listening_tcp
from tracekit.config import load_machine
from tracekit.gdb.mi import MiSession
from tracekit.kernel.kallsyms import SymbolTable, instruction_at
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.plugin import ensure_plugin, qemu_plugin_api
from tracekit.vm.qemu import QemuProcess
from tracekit.vm.qmp import Monitor
from tracekit.vm.runtime import RuntimeDir

pytestmark = pytest.mark.integration


def test_paused_qemu_qmp_and_gdb_over_unix_sockets(guest_assets, tools) -> None:  # type: ignore[no-untyped-def]
    runtime = RuntimeDir.create()
    assert runtime.path.stat().st_mode & 0o777 == 0o700
    spec = LaunchSpec(
        qemu=tools.qemu,
        kernel=guest_assets.image_path,
        initrd=guest_assets.initramfs_path,
        paused=True,
        qmp=True,
        gdb=True,
    )
    symbols = SymbolTable.from_json(Path(guest_assets.symbols).read_text())
    image = guest_assets.image_path.read_bytes()
    addr = symbols.address("handle_exit")
    with QemuProcess(build_argv(load_machine("vhe"), spec, runtime), runtime) as qemu:
        mon = Monitor(runtime.qmp_socket)
        mon.connect()
        try:
            assert mon.execute("query-status")["status"] == "prelaunch"
            mon.execute("trace-event-set-state", {"name": "gicv3_ich_lr_write", "enable": True})
            state = mon.execute("trace-event-get-state", {"name": "gicv3_ich_lr_write"})
            assert state[0]["state"] == "enabled"
            assert len(mon.execute("query-cpus-fast")) == 2
            with MiSession(tools.gdb) as mi:
                mi.command("-gdb-set architecture aarch64")
                mi.command(f"-target-select remote {runtime.gdb_socket}")
                cpsr = int(
                    mi.command('-data-evaluate-expression "(unsigned long)$cpsr"').payload["value"]
                )
                assert (cpsr >> 2) & 3 == 2, "QEMU virt with virtualization=on starts at EL2"
                assert qemu.pid is not None
                assert listening_tcp([qemu.pid, mi.pid]) == []
        finally:
            mon.quit()
            mon.close()
    # The kernel image bytes behind the probe address are what the symbol table says.
    assert instruction_at(image, symbols, addr) in (0xD503201F, 0xD503233F)
    runtime.remove()


def test_plugin_timestamps_probe_pcs_during_l1_boot(guest_assets, tools, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The TCG plugin loads into this QEMU and stamps a probe PC on the icount timeline."""
    symbols = SymbolTable.from_json(Path(guest_assets.symbols).read_text())
    pc = symbols.address("ksys_read")
    probes = tmp_path / "probes.txt"
    probes.write_text(f"{pc:x}\n")
    runtime = RuntimeDir.create()
    spec = LaunchSpec(
        qemu=tools.qemu,
        kernel=guest_assets.image_path,
        initrd=guest_assets.initramfs_path,
        qmp=False,
        kernel_args=("tracekit.scenario=nope",),
        plugin=ensure_plugin(tools, qemu_plugin_api(tools.qemu)),
        plugin_args=(f"probes={probes}",),
        log_file=tmp_path / "qemu.log",
    )
    with QemuProcess(build_argv(load_machine("vhe"), spec, runtime), runtime) as qemu:
        line = qemu.wait_for_line(["TRACEKIT-L1-READY "], 180)
        ready = json.loads(line.split(" ", 1)[1])
        assert ready["kvm_mode"] == "vhe" and ready["dev_kvm"] == "yes"
        time.sleep(0.5)
    stamps = [
        ln.split()
        for ln in (tmp_path / "qemu.log").read_text().splitlines()
        if ln.startswith("TKP ")
    ]
    assert stamps, "no probe timestamps"
    assert all(int(s[2], 16) == pc for s in stamps)
    times = [int(s[3]) for s in stamps]
    assert times == sorted(times)
    runtime.remove()

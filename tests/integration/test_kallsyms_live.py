"""The symbol table tracekit read from the Image equals the running kernel's own.

tracekit never boots the kernel to learn its symbols: ``guest build`` recovers kallsyms
from the raw ``Image`` (vmlinux-to-elf) and every probe address comes from there. The
independent source is the same kernel booted in L1 with ``nokaslr`` (link addresses are
run-time addresses) printing its ``/proc/kallsyms``: whatever kernel is cached, every
symbol must be at the same address in both.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from tracekit.config import load_machine
from tracekit.guest.assets import GuestAssets
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.qemu import QemuProcess
from tracekit.vm.runtime import RuntimeDir

BEGIN, END = "TRACEKIT-KALLSYMS-BEGIN", "TRACEKIT-KALLSYMS-END"


def _running_kallsyms(assets: GuestAssets, qemu_path: str) -> list[tuple[int, str, str]]:
    runtime = RuntimeDir.create()
    spec = LaunchSpec(
        qemu=qemu_path,
        kernel=assets.image_path,
        initrd=assets.initramfs_path,
        kernel_args=("tracekit.dump=kallsyms",),
        qmp=False,
    )
    profile = load_machine("vhe")
    lines: list[str] = []
    with QemuProcess(build_argv(profile, spec, runtime), runtime) as qemu:
        qemu.wait_for_line([BEGIN], profile.boot_timeout_s, deadline_what="L1's kallsyms dump")
        qemu.wait_for_line([END], 300, on_line=lines.append, deadline_what="its end")
    runtime.remove()
    text = gzip.decompress(base64.b64decode("".join(lines[:-1]))).decode()
    entries = []
    for line in text.splitlines():
        addr, kind, name, *module = line.split()
        if not module:  # built-in symbols only (no modules are loaded in L1)
            entries.append((int(addr, 16), kind, name))
    return entries


@pytest.mark.integration
def test_symbols_equal_the_running_kernels_proc_kallsyms(guest_assets, tools) -> None:  # type: ignore[no-untyped-def]
    table = SymbolTable.from_json(Path(guest_assets.symbols).read_text())
    running = _running_kallsyms(guest_assets, tools.qemu)
    assert len(running) > 20_000, "L1 printed too few symbols: was kptr_restrict set?"
    assert all(addr for addr, _, _ in running), "addresses are hidden (kptr_restrict)"

    live: dict[str, set[int]] = defaultdict(set)
    for addr, _kind, name in running:
        live[name].add(addr)
    ours: dict[str, set[int]] = defaultdict(set)
    for sym in table:
        ours[sym.name].add(sym.address)

    differ = {n: (sorted(ours[n]), sorted(a)) for n, a in live.items() if ours.get(n) != a}
    missing = sorted(set(ours) - set(live))
    summary = json.dumps(dict(list(differ.items())[:5]), default=lambda v: [hex(x) for x in v])
    assert not differ, f"{len(differ)} symbols differ from /proc/kallsyms, e.g. {summary}"
    assert not missing, f"{len(missing)} symbols not in /proc/kallsyms, e.g. {missing[:5]}"
    # The probed path is in both, at one address each.
    for name in ("vgic_queue_irq_unlock", "handle_exit", "kvm_vgic_flush_hwstate"):
        assert len(live[name]) == 1 and live[name] == ours[name]

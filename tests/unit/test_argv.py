from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.config import load_machine
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.runtime import RuntimeDir

pytestmark = pytest.mark.unit


def test_argv_uses_unix_sockets_only() -> None:
    rt = RuntimeDir(Path("/run/tk"))
    spec = LaunchSpec(
        qemu="qemu",
        kernel=Path("/k/Image"),
        initrd=Path("/k/initrd"),
        kernel_args=("tracekit.scenario=ipi",),
        paused=True,
        gdb=True,
    )
    argv = build_argv(load_machine("vhe"), spec, rt)
    joined = " ".join(argv)
    assert "-machine virt,gic-version=3,virtualization=on" in joined
    assert "-cpu max" in joined
    assert "-qmp unix:/run/tk/qmp.sock,server=on,wait=off" in joined
    assert "-gdb unix:/run/tk/gdb.sock,server=on,wait=off" in joined
    assert "-S" in argv
    assert "tcp" not in joined and "-s" not in argv
    assert argv[argv.index("-append") + 1].endswith("tracekit.scenario=ipi")
    assert argv[argv.index("-icount") + 1] == "shift=0,sleep=on"

"""The TCG plugin compiles for every plugin API it supports (host gcc)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tracekit.config import load_tools
from tracekit.vm.plugin import PLUGIN_APIS, ensure_plugin


@pytest.mark.integration
@pytest.mark.parametrize("api", PLUGIN_APIS)
def test_plugin_builds_for_each_api(api: int, tmp_path: Path) -> None:
    """Each variant compiles with -Werror, declares its API and imports only what that
    API's QEMU exports (no inline add on 4: it does not exist in QEMU 10.0)."""
    so = ensure_plugin(load_tools(), api, cache=tmp_path)
    assert f"-api{api}" in str(so.parent)
    dyn = subprocess.run(["nm", "-D", str(so)], capture_output=True, text=True, check=True)
    undefined = {ln.split()[-1] for ln in dyn.stdout.splitlines() if " U " in ln}
    plugin_calls = {s for s in undefined if s.startswith("qemu_plugin_")}
    assert ("qemu_plugin_register_vcpu_tb_exec_inline" in plugin_calls) == (api == 1)
    assert ("qemu_plugin_register_vcpu_tb_exec_cb" in plugin_calls) == (api == 4)
    # Reading captures (TKV) exists only where QEMU exports it (API 4: QEMU >= 9.2).
    assert ("qemu_plugin_read_memory_vaddr" in plugin_calls) == (api == 4)
    assert {"qemu_plugin_version", "qemu_plugin_install"} <= {
        ln.split()[-1] for ln in dyn.stdout.splitlines() if " D " in ln or " T " in ln
    }

"""Which TCG plugin API a QEMU speaks (configs/tools.toml [qemu_plugin_api])."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from tracekit.config import QemuPluginApis, load_qemu_plugin_apis, load_tools
from tracekit.errors import ConfigError, EnvironmentProblem
from tracekit.vm.plugin import (
    PLUGIN_APIS,
    ensure_plugin,
    plugin_api_for_version,
    qemu_plugin_api,
)

QEMU_72 = (
    "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u16)\n"
    "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
)
QEMU_100 = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"

pytestmark = pytest.mark.unit


def test_shipped_table_maps_debian_releases() -> None:
    apis = load_qemu_plugin_apis()
    assert plugin_api_for_version(QEMU_72, apis) == 1
    assert plugin_api_for_version(QEMU_100, apis) == 4
    assert plugin_api_for_version("QEMU emulator version 10.0.13 (Debian 1:10.0.13)", apis) == 4
    assert set(apis.by_release.values()) <= set(PLUGIN_APIS)


def test_unknown_release_names_version_and_supported_ones() -> None:
    apis = QemuPluginApis(by_release=types.MappingProxyType({"10.0": 4, "7.2": 1}))
    with pytest.raises(EnvironmentProblem) as info:
        plugin_api_for_version("QEMU emulator version 9.2.1 (Debian 1:9.2.1)\n", apis)
    msg = str(info.value)
    assert "\n" not in msg
    assert "QEMU 9.2.1 is not supported" in msg and "supported: QEMU 7.2, 10.0" in msg
    with pytest.raises(EnvironmentProblem, match="no QEMU version in 'qemu: bad option'"):
        plugin_api_for_version("qemu: bad option\n", apis)


def test_table_entry_the_plugin_cannot_build_is_a_config_error() -> None:
    apis = QemuPluginApis(by_release=types.MappingProxyType({"9.1": 3}))
    with pytest.raises(ConfigError, match="builds only for 1, 4"):
        plugin_api_for_version("QEMU emulator version 9.1.0\n", apis)
    with pytest.raises(ConfigError, match="not 3"):
        ensure_plugin(load_tools(), 3)


def test_table_is_strict_and_tools_ignore_it(tmp_path: Path) -> None:
    shipped = (Path(__file__).parents[2] / "configs/tools.toml").read_text()
    bad = tmp_path / "tools.toml"
    bad.write_text(shipped.replace('"10.0" = 4', '"10" = 4'))
    with pytest.raises(ConfigError, match=r"'10' is not a MAJOR\.MINOR"):
        load_qemu_plugin_apis(bad)
    bad.write_text(shipped.replace('"10.0" = 4', '"10.0" = "4"'))
    with pytest.raises(ConfigError, match=r"qemu_plugin_api\.10\.0 should be an integer"):
        load_qemu_plugin_apis(bad)
    assert load_tools(bad).qemu == "qemu-system-aarch64"
    bad.write_text(shipped.replace("[qemu_plugin_api]", "[qemu_plugin_apis]"))
    with pytest.raises(ConfigError, match="unknown key 'qemu_plugin_apis'"):
        load_tools(bad)


def test_detection_runs_the_binary_once_per_path_and_mtime(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    qemu = tmp_path / "qemu-system-aarch64"
    qemu.write_text(f"#!/bin/sh\necho x >> {calls}\necho '{QEMU_72.splitlines()[0]}'\n")
    qemu.chmod(0o755)
    assert qemu_plugin_api(str(qemu)) == 1
    assert qemu_plugin_api(str(qemu)) == 1
    assert calls.read_text().count("x") == 1
    qemu.write_text(f"#!/bin/sh\necho x >> {calls}\necho '{QEMU_100.strip()}'\n")
    qemu.chmod(0o755)
    st = qemu.stat()
    os.utime(qemu, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert qemu_plugin_api(str(qemu)) == 4
    assert calls.read_text().count("x") == 2
    with pytest.raises(EnvironmentProblem, match="not found"):
        qemu_plugin_api(str(tmp_path / "missing"))

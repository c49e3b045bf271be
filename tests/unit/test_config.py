from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.config import (
    load_guest_config,
    load_machine,
    load_scenarios,
    load_tools,
)
from tracekit.errors import ConfigError, ScenarioError

pytestmark = pytest.mark.unit


def test_shipped_configs_load() -> None:
    assert load_machine("vhe").kvm_mode == "vhe"
    assert load_machine("nvhe").kvm_mode == "nvhe"
    from tracekit.probes.spec import load_probe_set

    # The members are derived from the probe set's captures, not hand-kept.
    assert "kvm_vcpu.arch.fault.esr_el2" in load_probe_set("linux-6.1").btf_members()
    assert load_guest_config().kernels["6.12"].suite == "bookworm-backports"
    cat = load_scenarios()
    assert cat.default == "mixed"
    assert set(cat.scenarios) == {
        *("timer", "irqfd", "irqline", "ipi", "exceptions", "mixed"),
        *("linux-mmio", "linux-pci"),
    }
    assert cat.get("linux-pci").linux_l2 and not cat.get("mixed").linux_l2


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    text = (Path(__file__).parents[2] / "configs/machines/vhe.toml").read_text()
    bad.write_text(text.replace("memory_mb", "memroy_mb"))
    with pytest.raises(ConfigError) as info:
        load_machine(str(bad))
    msg = str(info.value)
    assert "memroy_mb" in msg and "did you mean 'memory_mb'" in msg and str(bad) in msg


def test_malformed_toml(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_machine(str(bad))


def test_wrong_type_and_literal(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "configs/machines/vhe.toml").read_text()
    bad = tmp_path / "a.toml"
    bad.write_text(text.replace("cpus = 2", 'cpus = "two"'))
    with pytest.raises(ConfigError, match="cpus should be an integer"):
        load_machine(str(bad))
    bad.write_text(text.replace('kvm_mode = "vhe"', 'kvm_mode = "hvm"'))
    with pytest.raises(ConfigError, match="expected one of 'vhe', 'nvhe'"):
        load_machine(str(bad))


def test_unknown_machine_lists_known() -> None:
    with pytest.raises(ConfigError, match="choose one of nvhe, vhe"):
        load_machine("nope")


def test_unknown_scenario_suggests() -> None:
    with pytest.raises(ScenarioError, match="did you mean 'timer'"):
        load_scenarios().get("timre")


def test_tool_env_override() -> None:
    tools = load_tools(env={"TRACEKIT_GDB": "/opt/gdb"})
    assert tools.gdb == "/opt/gdb"
    assert tools.qemu == "qemu-system-aarch64"

"""Probe-set resolution: fallbacks, missing symbols, phases that cannot be covered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import ConfigError, SymbolError
from tracekit.kernel.kallsyms import Symbol, SymbolTable
from tracekit.probes.resolve import resolve_probes
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

BASE = 0xFFFF800008000000
PROBES = """\
kernel = "test"
description = "test"
[[probe]]
name = "a"
symbol = "inlined_away"
fallbacks = ["fn_a"]
phase = "A"
role = "queue"
mode = "stop"
capture.intid = "u32 [x1 + s.m]"
{more}
"""
OTHER = "".join(
    f'[[probe]]\nname = "{p}"\nsymbol = "fn_{p}"\nphase = "{p.upper()}"\nrole = "path"\n'
    'mode = "timing"\n'
    for p in "bcdef"
)


def table() -> SymbolTable:
    names = ["fn_a", "fn_b", "fn_c", "fn_d", "fn_e", "fn_f", "_stext"]
    syms = [Symbol(BASE + 0x10000 + 0x100 * i, "T", n) for i, n in enumerate(names)]
    return SymbolTable(syms, image_base=BASE)


def image() -> bytes:
    return bytes(0x20000)


def test_fallback_is_used_and_reported(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER))
    res = resolve_probes(load_probe_set(str(f)), table(), image(), lambda m: 56)
    assert res.fallbacks_used == (("a", "fn_a"),)
    assert res.probes[0].address == BASE + 0x10000
    assert res.probes[0].gdb_captures == (("intid", "*(unsigned int *)($x1 + 56)"),)


def test_uncovered_phase_is_an_error_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER.replace('symbol = "fn_e"', 'symbol = "gone"')))
    with pytest.raises(SymbolError, match="cannot cover phase E"):
        resolve_probes(load_probe_set(str(f)), table(), image(), lambda m: 0)


def test_required_missing_symbol_without_fallback(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    text = PROBES.format(more=OTHER).replace('fallbacks = ["fn_a"]', "required = true")
    f.write_text(text)
    with pytest.raises(SymbolError, match=r"inlined_away is absent .* no fallback"):
        resolve_probes(load_probe_set(str(f)), table(), image(), lambda m: 0)


def test_timing_probe_cannot_capture(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER).replace('mode = "stop"', 'mode = "timing"'))
    with pytest.raises(ConfigError, match=r"need"):
        load_probe_set(str(f))


def test_shipped_probe_set_has_mission_probes() -> None:
    ps = load_probe_set()
    names = {p.symbol for p in ps.probes}
    assert {"vgic_queue_irq_unlock", "handle_exit", "kvm_vgic_flush_hwstate"} <= names
    assert {p.phase for p in ps.probes} == set("ABCDEF")
    assert ps.decoder.describe(2, 0x5A000000) == ("TRAP", "HVC64", "handle_hvc")


def test_an_unknown_role_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    from tracekit.errors import ConfigError
    from tracekit.probes.spec import load_probe_set

    text = (Path(__file__).parents[2] / "configs/probes/linux-6.1.toml").read_text()
    bad = tmp_path / "p.toml"
    bad.write_text(text.replace('role = "queue"', 'role = "queu"', 1))
    with pytest.raises(
        ConfigError, match="role 'queu' is not one the model knows; did you mean 'queue'"
    ):
        load_probe_set(str(bad))


def test_plugin_values_make_stop_probes_stamp_only(tmp_path: Path) -> None:
    from tracekit.probes.resolve import ResolvedProbeSet
    from tracekit.record.stamps import plugin_probe_file

    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER))
    pset = load_probe_set(str(f))
    plain = resolve_probes(pset, table(), image(), lambda m: 56)
    assert plain.probes[0].stops and plain.probes[0].programs == ()
    res = resolve_probes(pset, table(), image(), lambda m: 56, "nvhe", plugin_values=True)
    a = res.probes[0]
    assert not a.stops and res.stop_probes() == []
    assert [c.name for c in a.programs] == ["intid", "@cpsr", "@hcr"]
    assert a.gdb_captures == ()
    text = plugin_probe_file(ResolvedProbeSet(res.probes, (), ()))
    assert f"c {a.stamp_address:x} intid x1 0 56 4\n" in text
    assert f"c {a.stamp_address:x} @hcr HCR_EL2 0 0 0\n" in text
    # --read-values: GDB stops again (the reference) and the plugin's reads are checked.
    both = resolve_probes(
        pset, table(), image(), lambda m: 56, plugin_values=True, read_values=True
    )
    assert both.probes[0].stops and both.probes[0].gdb_captures
    assert [c.name for c in both.probes[0].programs] == ["intid", "@cpsr"]


def test_the_plugin_refuses_nothing_silently(tmp_path: Path) -> None:
    import dataclasses

    from tracekit.probes.program import CaptureProgram
    from tracekit.probes.resolve import ResolvedProbeSet
    from tracekit.record.stamps import MAX_CAPTURES, plugin_probe_file

    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER))
    res = resolve_probes(load_probe_set(str(f)), table(), image(), lambda m: 56, plugin_values=True)
    many = tuple(CaptureProgram(f"v{i}", "x0") for i in range(MAX_CAPTURES + 1))
    big = dataclasses.replace(res.probes[0], programs=many)
    with pytest.raises(ConfigError, match="plugin reads at most 48"):
        plugin_probe_file(ResolvedProbeSet((big, *res.probes[1:]), (), ()))


@pytest.mark.parametrize(
    ("typo", "hint"),
    [("intd", "did you mean 'intid'?"), ("gic_role", "use one of intid, target_vcpu")],
)
def test_an_unknown_capture_value_is_refused(tmp_path: Path, typo: str, hint: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER).replace("capture.intid", f"capture.{typo}"))
    with pytest.raises(ConfigError, match=rf"capture\.{typo} is not a value") as info:
        load_probe_set(str(f))
    assert hint in str(info.value)


def test_an_unknown_infer_value_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "configs/probes/linux-6.1.toml").read_text()
    assert 'infer.vcpu = "resident_vcpu"' in text
    bad = tmp_path / "p.toml"
    bad.write_text(text.replace('infer.vcpu = "resident_vcpu"', 'infer.vpcu = "resident_vcpu"', 1))
    with pytest.raises(
        ConfigError, match=r"infer\.vpcu is not a value the model knows; did you mean 'vcpu'"
    ):
        load_probe_set(str(bad))


def test_a_gic_role_is_not_a_probe_role(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(PROBES.format(more=OTHER).replace('role = "queue"', 'role = "ack"', 1))
    with pytest.raises(ConfigError, match="role 'ack' is not one the model knows"):
        load_probe_set(str(f))


def test_the_loaded_roles_are_the_vocabulary_s() -> None:
    from tracekit.model.vocabulary import PROBE_ROLES, Role

    ps = load_probe_set()
    assert all(type(p.role) is Role and p.role in PROBE_ROLES for p in ps.probes)
    assert ps.probes[0].role == "queue"  # a Role is its plain string

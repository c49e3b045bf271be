"""QEMU 10.0 (plugin API 4): the TCG plugin reads the probes' values itself, and places
the nVHE hyp probes itself, so a recording makes no debugger stop at all; that is
``record``'s default there (issue #14). GDB stays the reference: ``--read-values`` checks
every plugin-read value against its reads, and ``--no-plugin-values`` records with GDB
stops as on QEMU 7.2. Kernels 6.1 and 6.12, VHE and nVHE.

The QEMU is the host's own when it speaks plugin API 4 (Debian 13), else
``$TRACEKIT_QEMU10``, else the one ``guest build --newer-qemu`` (``make test``'s set-up)
unpacked into the cache from bookworm-backports (Debian 12). Missing, the tests fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit
from tests.qemus import qemu10
from tests.trace_check import acked, assert_trace_ok

pytestmark = pytest.mark.e2e

CLASSES = ("hardware", "virtual", "ipi")


def _record(out: Path, *extra: str) -> dict[str, Any]:
    """``record`` on QEMU 10 with no value-mode flag unless ``extra`` has one: the
    default is what is tested."""
    proc = run_tracekit(
        "record", "--scenario", "mixed", "--count", "20", "--json", "-o", str(out), *extra,
        timeout=1200,
        env={"TRACEKIT_QEMU": qemu10()},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_trace_ok(out)
    meta = json.loads(out.with_suffix(".raw").joinpath("meta.json").read_text())
    return {"summary": json.loads(proc.stdout), "meta": meta, "stderr": proc.stderr}


def _assert_chains_equal_ground_truth(summary: dict[str, Any]) -> None:
    for cls in CLASSES:
        c = summary["classes"][cls]
        assert acked(c) == c["ground_truth"] > 0, (cls, c)
        assert c["partial_chains"] == 0, (cls, c)
        assert c["source_matches"] == acked(c), (cls, c)
    assert "unknown" not in summary["classes"]
    assert summary["phases_seen"] == ["A", "B", "C", "D", "E", "F"]


@pytest.fixture(scope="module")
def plugin_only(tmp_path_factory: pytest.TempPathFactory, guest_assets: object) -> dict[str, Any]:
    return _record(tmp_path_factory.mktemp("pv") / "a.pftrace")


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory, guest_assets: object) -> dict[str, Any]:
    return _record(tmp_path_factory.mktemp("pv") / "b.pftrace", "--read-values")


@pytest.fixture(scope="module")
def nvhe_checked(tmp_path_factory: pytest.TempPathFactory, guest_assets: object) -> dict[str, Any]:
    return _record(
        tmp_path_factory.mktemp("pv") / "nc.pftrace", "--kvm-mode", "nvhe", "--read-values"
    )


@pytest.fixture(scope="module")
def nvhe(tmp_path_factory: pytest.TempPathFactory, guest_assets: object) -> dict[str, Any]:
    return _record(tmp_path_factory.mktemp("pv") / "n.pftrace", "--kvm-mode", "nvhe")


def test_chains_equal_ground_truth_without_a_debugger_stop(plugin_only: dict[str, Any]) -> None:
    _assert_chains_equal_ground_truth(plugin_only["summary"])
    meta = plugin_only["meta"]
    assert plugin_only["summary"]["stops"] == meta["stops"] == 0
    merge = meta["merge"]
    assert merge["debug_stops"] == 0 and merge["gdb_hits"] == 0  # QEMU's own count agrees
    assert merge["plugin_values_used"] > 0
    assert merge["plugin_values_missing"] == merge["plugin_values_unreadable"] == 0
    assert merge["plugin_orphan_value_lines"] == 0
    # The values the stops read are there: every queue names its INTID and target.
    assert merge["per_probe"]["vgic_queue_irq_unlock"] > 0
    assert meta["plugin_values"] is True


@pytest.mark.parametrize("mode", ["vhe", "nvhe"])
def test_612_without_a_debugger_stop(tmp_path: Path, guest_assets: object, mode: str) -> None:
    """Linux 6.12 (its own probe set; in nVHE its EL2 VAs are 52 bits wide under QEMU
    10's -cpu max, which the plugin's checks allow)."""
    rec = _record(tmp_path / f"{mode}.pftrace", "--kernel", "6.12", "--kvm-mode", mode)
    _assert_chains_equal_ground_truth(rec["summary"])
    assert rec["summary"]["kernel"].startswith("6.12")
    assert rec["meta"]["probe_set"] == "linux-6.12" and rec["meta"]["plugin_values"] is True
    assert rec["meta"]["stops"] == 0 and rec["meta"]["merge"]["debug_stops"] == 0


def test_gdb_stops_on_request(tmp_path: Path, guest_assets: object) -> None:
    """--no-plugin-values on QEMU 10: values read at GDB stops and inferred, as on 7.2
    (the inference rules hold under QEMU 10's -cpu max too)."""
    rec = _record(tmp_path / "gdb.pftrace", "--no-plugin-values")
    _assert_chains_equal_ground_truth(rec["summary"])
    meta = rec["meta"]
    assert meta["plugin_values"] is False and meta["stops"] > 0
    assert meta["merge"]["plugin_values_used"] == 0
    assert meta["merge"]["exceptions_unpaired"] == 0


def test_every_plugin_value_agrees_with_gdb(checked: dict[str, Any]) -> None:
    _assert_chains_equal_ground_truth(checked["summary"])
    merge = checked["meta"]["merge"]
    checks = merge["plugin_checks"]
    assert not [k for k in checks if k.endswith(".disagreed")], merge["plugin_disagreements"]
    assert sum(v for k, v in checks.items() if k.endswith(".agreed")) > 1000
    assert checks["@host.agreed"] == checked["meta"]["stops"] > 0
    said = " ".join(checked["stderr"].split())  # the console may wrap the line
    assert "plugin-read values checked against GDB reads:" in said and " 0 disagree" in said


def test_nvhe_places_the_hyp_probes_without_a_stop(nvhe: dict[str, Any]) -> None:
    """The plugin reads VBAR_EL2 itself and moves the hyp probes (tk_timebase.c
    relocate_hyp): not one debugger stop, and no hyp probe hidden in code translated
    before the move."""
    _assert_chains_equal_ground_truth(nvhe["summary"])
    meta = nvhe["meta"]
    assert meta["kvm_mode"] == "nvhe" and meta["hyp_va_delta"] is not None
    assert meta["stops"] == 0 and meta["merge"]["debug_stops"] == 0
    assert meta["vbar_el2"] - meta["hyp_va_delta"] > 0  # the host vector's kernel VA
    assert meta["merge"]["exceptions_unpaired"] == 0
    assert meta["merge"]["plugin_values_missing"] == 0
    hyp = [p for p in meta["probes"] if p["hyp"]]
    assert hyp and all(meta["merge"]["per_probe"].get(p["name"], 0) > 0 for p in hyp)


def test_nvhe_gdb_reads_the_same_vbar_el2(nvhe_checked: dict[str, Any]) -> None:
    """--read-values: GDB, the reference, reads VBAR_EL2 at its first host stop; the
    plugin's read agrees (a disagreement ends the recording with an error)."""
    _assert_chains_equal_ground_truth(nvhe_checked["summary"])
    meta = nvhe_checked["meta"]
    assert meta["vbar_el2_gdb"] == meta["vbar_el2"]
    checks = meta["merge"]["plugin_checks"]
    assert not [k for k in checks if k.endswith(".disagreed")], meta["merge"][
        "plugin_disagreements"
    ]

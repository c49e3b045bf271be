"""The plugin's nVHE move of the hyp probes as the recorder reads it back (record/hyp.py)
and the probe-file lines that ask for it (record/stamps.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.record.hyp import PluginMove, find_plugin_move

pytestmark = pytest.mark.unit

#: As tk_timebase.c printed it in a real nVHE recording (QEMU 10.0.2, kernel 6.1).
REAL = "TKH 0 975916622 bc8e80dc6800 13c8e78200000 0\n"


def test_the_first_move_line_is_read_after_other_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_text("TKP 0 ffff800008123456 100\nTaking exception 5 [IRQ]\n" + REAL + REAL)
    assert find_plugin_move(log) == PluginMove(0xBC8E80DC6800, 0x13C8E78200000, 0)


def test_a_refused_vbar_has_no_delta(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_text("TKH 1 2000 1234 bad\n")
    assert find_plugin_move(log) == PluginMove(0x1234, None, 0)


def test_no_line_no_file_or_a_torn_line_is_no_move(tmp_path: Path) -> None:
    assert find_plugin_move(tmp_path / "missing.log") is None
    log = tmp_path / "qemu.log"
    log.write_text("TKP 0 10 1\nTKH 0 975916622 bc8e80dc")  # cut by a crash
    assert find_plugin_move(log) is None


def test_hyp_probes_are_written_by_kernel_va_for_the_plugin_to_move() -> None:
    """With a host vector given, hyp probes become ``k KVA`` lines after one ``h KVA``
    line (tk_timebase.c load_probes); the other probes stay plain PCs. Without, every
    probe is a plain PC, as QEMU 7.2's plugin reads them."""
    import dataclasses

    from tests.fakepeer import kernel
    from tracekit.record.stamps import plugin_probe_file

    probes = kernel.resolution("nvhe", plugin_values=True).probes
    hyp = [p for p in probes.probes if p.spec.hyp]
    host = [p for p in probes.probes if not p.spec.hyp]
    assert hyp and host
    lines = plugin_probe_file(probes, kernel.HOST_VECTOR).splitlines()
    assert lines[0] == f"h {kernel.HOST_VECTOR:x}"
    assert {f"k {p.stamp_address:x}" for p in hyp} <= set(lines)
    assert {f"{p.stamp_address:x}" for p in host} <= set(lines)
    assert not {f"{p.stamp_address:x}" for p in hyp} & set(lines)
    plain = plugin_probe_file(probes).splitlines()
    assert not [ln for ln in plain if ln[:2] in ("h ", "k ")]
    moved = dataclasses.replace(hyp[0], hyp_delta=kernel.HYP_DELTA)
    assert moved.stamp_address == hyp[0].stamp_address + kernel.HYP_DELTA


def test_the_probe_file_is_replaced_whole_never_rewritten_in_place(tmp_path: Path) -> None:
    """The plugin may re-read it at any moment (a QEMU thread's translation flush): a
    rewrite must swap in a complete file (a new inode), never truncate the one there."""
    from tracekit.record.stamps import PluginStamps

    stamps = PluginStamps(tmp_path)
    stamps.set_probes("10\n")
    before = stamps.probe_file.stat().st_ino
    with stamps.probe_file.open() as reader:  # as the plugin would hold it
        stamps.set_probes("20\n30\n")
        assert reader.read() == "10\n"  # the old file is still whole for its reader
    assert stamps.probe_file.read_text() == "20\n30\n"
    assert stamps.probe_file.stat().st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["probes.txt"]

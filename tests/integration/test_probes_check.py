"""`tracekit probes check` on the cached kernel: the shipped set passes, a broken one is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run_tracekit

pytestmark = pytest.mark.integration

SET = Path(__file__).parents[2] / "configs" / "probes" / "linux-6.1.toml"


def test_the_shipped_probe_set_fits_the_cached_kernel(guest_assets: object) -> None:
    out = run_tracekit("probes", "check", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["failed"] == [] and data["probe_set"] == "linux-6.1"
    by_name = {p["name"]: p for p in data["probes"]}
    queue = by_name["vgic_queue_irq_unlock"]
    assert queue["address"] and "symbol" in queue["found_by"]
    assert any(c["name"] == "intid" and c["members"] for c in queue["captures"])
    assert "frame record store" in by_name["irqfd_wakeup"]["found_by"]
    assert "after the bl" in by_name["host_resume"]["found_by"]
    table = run_tracekit("probes", "check", env={"COLUMNS": "220"})
    assert table.returncode == 0 and "vgic_queue_irq_unlock" in table.stdout


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ('symbol = "handle_exit"', 'symbol = "handle_exit_gone"', "handle_exit"),
        (
            '"u32 [x1 + vgic_irq.intid]"',
            '"u8 [x1 + vgic_irq.intid]"',
            "vgic_queue_irq_unlock.intid",
        ),
    ],
    ids=["missing-symbol", "capture-width"],
)
def test_a_broken_probe_set_is_named(
    tmp_path: Path, guest_assets: object, old: str, new: str, named: str
) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text(SET.read_text().replace(old, new, 1))
    out = run_tracekit("probes", "check", "--probes", str(bad), env={"COLUMNS": "300"})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert named in out.stderr.splitlines()[-1], out.stderr


def test_a_malformed_probe_set_is_bad_input(tmp_path: Path, guest_assets: object) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('kernel = "6.1"\ndescription = "y"\n[[probe]]\nname = "a"\nsymbl = "b"\n')
    out = run_tracekit("probes", "check", "--probes", str(bad))
    assert out.returncode == 2 and "unknown key 'symbl'" in out.stderr, out.stderr


def test_the_612_set_fits_the_612_kernel(guest_assets: object) -> None:
    out = run_tracekit("probes", "check", "--kernel", "6.12", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["probe_set"] == "linux-6.12" and data["failed"] == []
    assert data["kernel"].startswith("6.12")
    # The 6.1 set on the 6.12 kernel is refused: another kernel's probes are never used.
    wrong = run_tracekit("probes", "check", "--kernel", "6.12", "--probes", "linux-6.1")
    assert wrong.returncode == 2 and "written for kernel 6.1" in wrong.stderr, wrong.stderr

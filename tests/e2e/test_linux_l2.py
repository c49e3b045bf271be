"""A real Linux L2 under a real VMM (issue 15): Debian's arm64 QEMU with KVM inside L1
boots L2 Linux, whose virtio devices interrupt over SPIs (virtio-mmio) and over MSIs the
virtual ITS translates into LPIs (virtio-pci); L2's own /proc/interrupts, read between
two MMIO marks the recording sees, is the ground truth.

Every scenario in both KVM modes on the host's QEMU (7.2 with GDB stops on Debian 12,
10.0 with plugin-read values on Debian 13), linux-pci also on QEMU 10 where the host's
QEMU is older; the Linux stack's faults; `bench --scenario linux-pci`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit, start_tracekit
from tests.e2e.test_faults import Recording, check_aftermath
from tests.qemus import qemu10
from tests.trace_check import assert_trace_ok

pytestmark = pytest.mark.e2e

CELLS = [("linux-mmio", "vhe"), ("linux-pci", "vhe"), ("linux-mmio", "nvhe"), ("linux-pci", "nvhe")]


@pytest.fixture(scope="session")
def linux_l2_assets(guest_assets: object) -> object:
    from tracekit.errors import EnvironmentProblem
    from tracekit.guest.linux_l2 import load_linux_l2

    try:
        return load_linux_l2()
    except EnvironmentProblem as exc:
        pytest.fail(f"Linux L2 assets missing: {exc} (run `make setup-test`)", pytrace=False)


def record(
    out: Path, scenario: str, mode: str, *extra: str, env: dict[str, str] | None = None
) -> Any:
    proc = run_tracekit(
        "record", "--scenario", scenario, "--kvm-mode", mode, "--json", "-o", str(out),
        *extra, timeout=1500, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "L2's own counts" in proc.stderr
    assert_trace_ok(out)
    return json.loads(proc.stdout)


class Cells:
    """Each cell's recording, made by the first test that needs it (so each recording
    counts against that test's own timeout) and shared by the module's other tests."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.done: dict[str, tuple[Path, Any]] = {}

    def get(self, scenario: str, mode: str) -> tuple[Path, Any]:
        key = f"{scenario}-{mode}"
        if key not in self.done:
            path = self.tmp / f"{key}.pftrace"
            self.done[key] = (path, record(path, scenario, mode))
        return self.done[key]


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory, linux_l2_assets: object) -> Cells:
    return Cells(tmp_path_factory.mktemp("linux"))


def _check_window(s: dict[str, Any]) -> None:
    """Every (INTID, vCPU) L2 counted: the recording's acknowledgements equal it (up to
    a snapshot's bracket), and complete + merged chains account for every one."""
    l2 = s["l2_window"]
    assert l2["ok"] and l2["intids"], l2["differences"]
    for r in l2["intids"]:
        assert r["intid"] >= 0, r  # MSIs joined to their LPI by the recording
        assert r["recorded"] <= r["guest"] <= r["recorded"] + r["bracketed"], r
    for cls, c in s["classes"].items():
        acked = c["complete_chains"] + c["merged_chains"]
        assert c["partial_chains"] == 0, (cls, c)
        assert acked <= c["ground_truth"] <= acked + c["bracketed"], (cls, c)
        # The summary keeps its shape and adds the two counts per class.
        assert {"ground_truth", "complete_chains", "partial_chains"} <= set(c)
        assert {"merged_chains", "unacknowledged"} <= set(c)
    assert s["phases_seen"] == ["A", "B", "C", "D", "E", "F"]


@pytest.mark.parametrize(("scenario", "mode"), CELLS)
def test_chains_account_for_l2s_own_counts(cells: Cells, scenario: str, mode: str) -> None:
    out, s = cells.get(scenario, mode)
    assert (s["scenario"], s["kvm_mode"]) == (scenario, mode)
    _check_window(s)
    classes = s["classes"]
    assert classes["hardware"]["complete_chains"] > 0  # L2's arch timer (PPI 27)
    assert classes["ipi"]["complete_chains"] > 0  # the scheduler's IPIs
    if scenario == "linux-pci":
        assert classes["msi"]["complete_chains"] > 0
        assert classes["virtual"]["ground_truth"] == 0
    else:
        assert classes["virtual"]["complete_chains"] + classes["virtual"]["merged_chains"] > 0
        assert classes["msi"]["ground_truth"] == 0
    # Read back from the file: the same counts, L2's names on its INTIDs.
    back = json.loads(run_tracekit("summary", str(out), "--json", check=True).stdout)
    assert back["classes"] == classes and back["l2_window"] == s["l2_window"]
    names = {b.get("name") for b in back["busiest_intids"]}
    assert "arch_timer" in names


@pytest.mark.parametrize(("scenario", "mode"), CELLS)
def test_a_chains_class_comes_from_its_a_path(cells: Cells, scenario: str, mode: str) -> None:
    """msi chains were queued by the ITS translation (fast or slow path), virtio-mmio's
    SPIs by KVM_IRQ_LINE: from the queue's call stack, never from L2's report."""
    from tracekit.export.reader import parse_trace

    out, _s = cells.get(scenario, mode)
    table = parse_trace(out.read_bytes()).table
    for row in table.chains:
        if row.cls == "msi":
            assert row.intid >= 8192 and row.source_kind == "msi", row
            assert row.source_function in (
                "vgic_its_inject_cached_translation",
                "vgic_its_inject_msi",
            ), row
        if row.cls == "virtual" and row.complete:
            assert row.source_kind in ("irq_line", "irqfd"), row
    wanted = "msi" if scenario == "linux-pci" else "virtual"
    assert any(r.cls == wanted and r.complete for r in table.chains)
    if wanted == "msi":  # explain names the MSI the ITS translated and the path it took
        walk = json.loads(run_tracekit("explain", str(out), "--class", "msi", "--json").stdout)
        said = " ".join(step["what"] for step in walk["steps"] if step["phase"] == "A")
        assert "translates DeviceID" in said and "path" in said, said


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_linux_pci_on_qemu10_without_a_stop(
    tmp_path: Path, linux_l2_assets: object, kernel: str
) -> None:
    """QEMU 10's default mode (no debugger stop), with L1 on either kernel family (L2
    keeps the 6.1 kernel its assets were built with)."""
    choose = ("--kernel", kernel) if kernel != "6.1" else ()  # 6.1: the default kernel
    s = record(
        tmp_path / "pci10.pftrace", "linux-pci", "vhe", *choose,
        env={"TRACEKIT_QEMU": qemu10()},
    )  # fmt: skip
    _check_window(s)
    assert s["kernel"].startswith(kernel + ".")
    assert s["stops"] == 0 and s["classes"]["msi"]["complete_chains"] > 0


class LinuxRecording(Recording):
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.out = tmp / "fault.pftrace"
        self.proc = start_tracekit(
            "record", "--scenario", "linux-pci", "-o", str(self.out), *extra
        )  # fmt: skip
        self.seen: set[int] = set()
        self.runtime: Path | None = None
        self.started = time.time()

    def watch(self, timeout: float = 600) -> tuple[int, str, float]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.children()  # for the leftover checks
            time.sleep(0.1)
        return self.finish(timeout=60)


@pytest.mark.parametrize(
    ("fault", "want", "also"),
    [
        ("qemu", "inner QEMU exited", "tk-no-such-device"),
        ("die", "inner QEMU exited (code 137)", "before L2's report"),
        ("panic", "L2 panicked before its /init", "Kernel panic"),
        ("module", "L2's init failed", "insmod tk-no-such-module.ko failed"),
    ],
)
def test_linux_stack_faults_end_in_one_line(
    tmp_path: Path,
    linux_l2_assets: object,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    want: str,
    also: str,
) -> None:
    # QEMU 10 (no stop): the faults are the inner stack's, whatever the outer QEMU.
    monkeypatch.setenv("TRACEKIT_QEMU", qemu10())
    rec = LinuxRecording(tmp_path, "--kernel-arg", f"tracekit.l2fault={fault}")
    rc, err, _ = rec.watch()
    assert rc == 2, err
    data = check_aftermath(rec, rc, err, want)
    assert also in err and also in data["incomplete_reason"], err


def test_hung_l2_is_named(
    tmp_path: Path, linux_l2_assets: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEKIT_QEMU", qemu10())
    rec = LinuxRecording(tmp_path, "--kernel-arg", "tracekit.l2fault=hang", "--stall-timeout", "15")
    rc, err, _ = rec.watch()
    assert rc == 2, err
    check_aftermath(rec, rc, err, "L2 printed nothing for 15 s at its /init (hung L2?)")


def test_bench_linux_pci(linux_l2_assets: object) -> None:
    from tests.e2e.test_bench import _check_run

    out = run_tracekit(
        "bench", "--scenario", "linux-pci", "--export-events", "20000", "--json",
        "--qemu", qemu10(), timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    (run,) = data["runs"]
    _check_run(run)
    assert run["detail"]["interrupts"] > 100  # L2's own count over its window

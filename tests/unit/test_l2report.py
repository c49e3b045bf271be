"""L2 Linux's report (guests/linux-l2/init-l2) parsed into typed sources, against a golden.

tests/data/linux-l2/l2-report-pci.txt is the decoded report of a real `linux-pci` run
(Debian 6.1 cloud kernel in L2, QEMU 7.2 with KVM in L1, 2 vCPUs).
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest

from tracekit.errors import GroundTruthError
from tracekit.model.l2report import (
    L2Report,
    decode_report,
    parse_proc_interrupts,
    parse_report,
    parse_sys_irqs,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parents[1] / "data"
REPORT = DATA / "linux-l2" / "l2-report-pci.txt"
GOLDEN = DATA / "golden" / "l2-report-pci.sources.txt"


def sources_text(report: L2Report) -> str:
    rows = [f"kernel {report.kernel} cpus {report.cpus} window {report.window_s:.2f} s"]
    rows += [f"step {name} {t:.2f}" for name, t in report.steps]
    for s in report.sources():
        msi = f"dev {s.msi[0]} event {s.msi[1]}" if s.msi else "-"
        rows.append(
            f"{s.label:>5} {s.kind:<5} intid {s.intid!s:>4} msi {msi:<16} {s.chip:<8}"
            f" before {s.before} after {s.after} delta {s.delta} {s.name}"
        )
    return "\n".join(rows) + "\n"


def test_golden_sources() -> None:
    assert sources_text(parse_report(REPORT.read_text())) == GOLDEN.read_text()


def test_classes_of_the_pci_run() -> None:
    r = parse_report(REPORT.read_text())
    by = {s.label: s for s in r.sources()}
    assert (by["11"].kind, by["11"].intid, by["11"].name) == ("ppi", 27, "arch_timer")
    assert (by["IPI0"].kind, by["IPI0"].intid) == ("sgi", 0)
    # ITS-MSI: the hwirq is pci_msi_domain_calc_hwirq's (requester ID << 11 | index),
    # not the LPI; 00:01.0 is requester ID 8.
    blk = by["20"]
    assert (blk.kind, blk.intid, blk.msi, blk.chip) == ("lpi", None, (8, 1), "ITS-MSI")
    assert blk.total > 0
    assert "Err" not in by  # one count, not per CPU
    assert [name for name, _ in r.steps] == ["blk", "net", "ping", "cpus", "end", "report"]


def test_decode_round_trip_and_bad_body() -> None:
    text = REPORT.read_text()
    b64 = base64.b64encode(gzip.compress(text.encode())).decode()
    lines = [b64[i : i + 76] for i in range(0, len(b64), 76)]
    assert decode_report(lines) == text
    with pytest.raises(GroundTruthError, match="does not decode"):
        decode_report(["H4sI", "!!!"])


def test_proc_interrupts_any_widths_and_no_domain() -> None:
    pi = parse_proc_interrupts(
        "CPU0 CPU1\n 5: 1 2 GICv3 27 Level arch_timer\n 9: 3 4 dummy Edge a, b\n"
        "IPI0: 7 8 Resched x\nErr: 0\n"
    )
    assert [(x.label, x.counts, x.chip, x.hwirq, x.trigger, x.name) for x in pi.lines] == [
        ("5", (1, 2), "GICv3", 27, "Level", "arch_timer"),
        ("9", (3, 4), "dummy", None, "Edge", "a, b"),
        ("IPI0", (7, 8), None, None, None, "Resched x"),
        ("Err", (0,), None, None, None, ""),
    ]
    with pytest.raises(GroundTruthError, match="CPU header"):
        parse_proc_interrupts(" 5: 1 2 GICv3 27 Level x\n")
    with pytest.raises(GroundTruthError, match="1 counts for 2 CPUs"):
        parse_proc_interrupts("CPU0 CPU1\n 5: 1 GICv3 27 Level x\n")


def test_sys_irqs_lines() -> None:
    irqs = parse_sys_irqs(
        "/sys/kernel/irq/20/hwirq:16385\n/sys/kernel/irq/20/chip_name:ITS-MSI\n"
        "/sys/kernel/irq/20/actions:virtio0-req.0\n/sys/kernel/irq/8/hwirq:7\n"
        "/sys/kernel/irq/8/chip_name:GICv3\n/sys/kernel/irq/8/actions:\n"
    )
    assert [(i.irq, i.hwirq, i.chip, i.actions) for i in irqs.values()] == [
        (8, 7, "GICv3", ""),
        (20, 16385, "ITS-MSI", "virtio0-req.0"),
    ]
    with pytest.raises(GroundTruthError, match="not /sys/kernel/irq"):
        parse_sys_irqs("20|16385|ITS-MSI|x\n")


def test_missing_section() -> None:
    text = REPORT.read_text()
    cut = text[: text.index("== interrupts after")]
    with pytest.raises(GroundTruthError, match="no section interrupts after, irqs after"):
        parse_report(cut)

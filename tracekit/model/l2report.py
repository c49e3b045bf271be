"""L2 Linux's own interrupt counts, as its /init reports them (issue 15; pure parsing).

``guests/linux-l2/init-l2`` writes one text report and prints it gzip + base64 between
``TRACEKIT-L2-REPORT-BEGIN`` / ``-END``. Its sections (``== NAME ARGS``):

- ``l2 RELEASE cpus N``;
- ``interrupts before|after``: ``/proc/interrupts`` as is. Its layout is
  ``kernel/irq/proc.c`` ``show_interrupts``: a header of ``CPUn`` columns; per Linux IRQ
  ``N:``, one count per CPU, the chip's name, the hwirq when the IRQ has a domain, the
  trigger (``Level``/``Edge``, ``CONFIG_GENERIC_IRQ_SHOW_LEVEL``) and the action names;
  then the architecture's lines (``arch/arm64/kernel/smp.c`` ``arch_show_interrupts``:
  ``IPIn:`` with counts and a description; ``kernel/irq/proc.c``: ``Err:``).
- ``irqs before|after``: ``/sys/kernel/irq/N/{hwirq,chip_name,actions}:VALUE`` lines
  (``kernel/irq/irqdesc.c``). It also lists the IPIs, which
  /proc/interrupts hides under ``IPIn``.
- ``window-begin|window-end UPTIME``: L2's clock around the workload; ``step NAME
  UPTIME`` when each part of it starts.

INTIDs. The GICv3 domain's hwirq *is* the INTID (``drivers/irqchip/irq-gic-v3.c``
``gic_irq_domain_translate``: SGIs 0-15, PPIs 16-31, SPIs 32-1019). arm64's IPIs are
SGIs: ``IPIn`` is the IRQ whose GICv3 hwirq is n (``gic_smp_init`` allocates SGIs 0-7,
``set_smp_ipi_range``). An ``ITS-MSI`` IRQ's hwirq is *not* its LPI: it is the PCI-MSI
domain's ``pci_msi_domain_calc_hwirq`` = ``msi_index | pci_dev_id << 11 | domain << 27``
(``drivers/pci/msi/irqdomain.c``), i.e. the ITS's (DeviceID, EventID) for the
translation; the LPI (INTID >= 8192) the ITS maps it to is chosen by the ITS driver and
shown nowhere without ``CONFIG_GENERIC_IRQ_DEBUGFS`` (Debian's cloud kernel has it off).
So an MSI source is identified by (DeviceID, EventID) and its INTID is left ``None``;
the recording's ITS translation gives the LPI.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
from dataclasses import dataclass
from typing import Literal

from tracekit.errors import GroundTruthError

__all__ = [
    "REPORT_BEGIN",
    "REPORT_END",
    "IrqLine",
    "IrqSource",
    "L2Report",
    "ProcInterrupts",
    "Snapshot",
    "SysIrq",
    "decode_report",
    "parse_proc_interrupts",
    "parse_report",
    "parse_sys_irqs",
]

REPORT_BEGIN = "TRACEKIT-L2-REPORT-BEGIN"
REPORT_END = "TRACEKIT-L2-REPORT-END"

#: First LPI INTID (GICv3 architecture: LPIs start at 8192).
FIRST_LPI = 8192

Kind = Literal["sgi", "ppi", "spi", "lpi", "other"]


def _bad(what: str) -> GroundTruthError:
    return GroundTruthError(
        f"L2's report is malformed: {what}",
        hint="see l2-report.txt in the run's runtime directory",
    )


@dataclass(frozen=True)
class IrqLine:
    """One line of /proc/interrupts."""

    #: ``"13"`` for a Linux IRQ, ``"IPI0"`` / ``"Err"`` for the architecture's lines.
    label: str
    counts: tuple[int, ...]
    chip: str | None = None
    hwirq: int | None = None
    trigger: str | None = None
    #: Action names (``virtio0-input.0``) or the IPI's description.
    name: str = ""

    @property
    def irq(self) -> int | None:
        return int(self.label) if self.label.isdigit() else None


@dataclass(frozen=True)
class ProcInterrupts:
    cpus: int
    lines: tuple[IrqLine, ...]

    def by_label(self) -> dict[str, IrqLine]:
        return {line.label: line for line in self.lines}


@dataclass(frozen=True)
class SysIrq:
    """``/sys/kernel/irq/N``: the IRQ's hwirq in its (top) domain, chip and actions."""

    irq: int
    hwirq: int
    chip: str
    actions: str


_COUNT = re.compile(r"\d+")
_TRIGGERS = ("Level", "Edge")


def parse_proc_interrupts(text: str) -> ProcInterrupts:
    """``/proc/interrupts`` text (any column widths) into typed lines."""
    rows = [r for r in text.splitlines() if r.strip()]
    if not rows or not rows[0].split() or not rows[0].split()[0].startswith("CPU"):
        raise _bad("/proc/interrupts has no CPU header")
    cpus = len(rows[0].split())
    lines: list[IrqLine] = []
    for row in rows[1:]:
        label, sep, rest = row.strip().partition(":")
        if not sep:
            raise _bad(f"a /proc/interrupts line without a label: {row[:60]!r}")
        words = rest.split()
        n = 0
        while n < min(cpus, len(words)) and _COUNT.fullmatch(words[n]):
            n += 1
        counts = tuple(int(w) for w in words[:n])
        tail = words[n:]
        if not label.isdigit():  # IPIn, Err, ...: the rest is a description
            lines.append(IrqLine(label, counts, name=" ".join(tail)))
            continue
        if n != cpus:
            raise _bad(f"IRQ {label} has {n} counts for {cpus} CPUs")
        chip = tail[0] if tail else None
        hwirq = int(tail[1]) if len(tail) > 1 and tail[1].isdigit() else None
        rest_words = tail[2:] if hwirq is not None else tail[1:]
        trigger = rest_words[0] if rest_words and rest_words[0] in _TRIGGERS else None
        name = " ".join(rest_words[1:] if trigger else rest_words)
        lines.append(IrqLine(label, counts, chip, hwirq, trigger, name))
    return ProcInterrupts(cpus, tuple(lines))


def parse_sys_irqs(text: str) -> dict[int, SysIrq]:
    """``/sys/kernel/irq/N/ATTR:VALUE`` lines (``grep -H ^`` over hwirq, chip_name and
    actions) into one record per IRQ."""
    attrs: dict[int, dict[str, str]] = {}
    for row in text.splitlines():
        if not row.strip():
            continue
        path, sep, value = row.partition(":")
        parts = path.split("/")
        if not sep or len(parts) != 6 or parts[:4] != ["", "sys", "kernel", "irq"]:
            raise _bad(f"an IRQ table line is not /sys/kernel/irq/N/ATTR:VALUE: {row[:60]!r}")
        if not parts[4].isdigit():
            raise _bad(f"an IRQ table line names no IRQ number: {row[:60]!r}")
        attrs.setdefault(int(parts[4]), {})[parts[5]] = value.strip()
    out: dict[int, SysIrq] = {}
    for irq, a in sorted(attrs.items()):
        if not a.get("hwirq", "").isdigit() or "chip_name" not in a:
            raise _bad(f"IRQ {irq} has no hwirq or chip_name")
        out[irq] = SysIrq(irq, int(a["hwirq"]), a["chip_name"], a.get("actions", ""))
    return out


@dataclass(frozen=True)
class Snapshot:
    interrupts: ProcInterrupts
    irqs: dict[int, SysIrq]


@dataclass(frozen=True)
class IrqSource:
    """One interrupt source of L2, its counts per CPU before and after the window."""

    #: /proc/interrupts' label: ``"13"`` or ``"IPI1"``.
    label: str
    kind: Kind
    #: GIC INTID; None for an MSI (its LPI is the ITS's choice, see the module doc).
    intid: int | None
    #: (DeviceID, EventID) of an ITS-MSI, as the ITS translates it.
    msi: tuple[int, int] | None
    chip: str
    name: str
    before: tuple[int, ...]
    after: tuple[int, ...]

    @property
    def delta(self) -> tuple[int, ...]:
        return tuple(a - b for a, b in zip(self.after, self.before, strict=True))

    @property
    def total(self) -> int:
        return sum(self.delta)


def _kind(intid: int) -> Kind:
    if intid < 16:
        return "sgi"
    if intid < 32:
        return "ppi"
    if intid < 1020:
        return "spi"
    return "lpi" if intid >= FIRST_LPI else "other"


@dataclass(frozen=True)
class L2Report:
    kernel: str
    cpus: int
    before: Snapshot
    after: Snapshot
    window_begin_s: float
    window_end_s: float
    #: (name, L2 uptime at its start) of each part of the workload.
    steps: tuple[tuple[str, float], ...] = ()

    @property
    def window_s(self) -> float:
        return self.window_end_s - self.window_begin_s

    def sources(self) -> tuple[IrqSource, ...]:
        """Every line of /proc/interrupts with its INTID (or MSI identity) and counts."""
        before = self.before.interrupts.by_label()
        sys = self.after.irqs
        # IPIn -> the GICv3 SGI the kernel requested as "IPI" (irq-gic-v3.c gic_smp_init).
        sgis = sorted(i.hwirq for i in sys.values() if i.chip == "GICv3" and i.hwirq < 16)
        out: list[IrqSource] = []
        for line in self.after.interrupts.lines:
            prev = before.get(line.label)
            prior = prev.counts if prev is not None else (0,) * len(line.counts)
            if len(line.counts) != self.cpus or len(prior) != self.cpus:
                continue  # Err: one count, not per CPU
            intid: int | None = None
            msi: tuple[int, int] | None = None
            kind: Kind = "other"
            chip = line.chip or ""
            irq = line.irq
            if line.label.startswith("IPI") and line.label[3:].isdigit():
                n = int(line.label[3:])
                intid, kind, chip = (n, "sgi", "GICv3") if n in sgis else (None, "other", "")
            elif irq is not None:
                hw = sys[irq].hwirq if irq in sys else line.hwirq
                if chip == "GICv3" and hw is not None:
                    intid, kind = hw, _kind(hw)
                elif chip == "ITS-MSI" and hw is not None:
                    # pci_msi_domain_calc_hwirq: the requester ID above bit 11, the index below
                    msi, kind = ((hw >> 11) & 0xFFFF, hw & 0x7FF), "lpi"
            out.append(IrqSource(line.label, kind, intid, msi, chip, line.name, prior, line.counts))
        return tuple(out)


def decode_report(lines: list[str]) -> str:
    """The report's text from the base64 lines between BEGIN and END."""
    try:
        return gzip.decompress(base64.b64decode("".join(s.strip() for s in lines))).decode()
    except (binascii.Error, OSError, EOFError, UnicodeDecodeError) as exc:
        raise _bad(f"its gzip + base64 body does not decode ({exc})") from None


def _sections(text: str) -> dict[str, tuple[str, str]]:
    """``== NAME ARGS`` headers -> (ARGS, the lines up to the next header)."""
    out: dict[str, tuple[str, str]] = {}
    name: str | None = None
    args = ""
    body: list[str] = []
    for row in [*text.splitlines(), "== end"]:
        if row.startswith("== "):
            if name is not None:
                out[name] = (args, "\n".join(body))
            head = row[3:].split(" ", 1)
            key = head[0]
            args = head[1] if len(head) > 1 else ""
            # "interrupts before" and "irqs after" are keyed with their argument
            if key in ("interrupts", "irqs"):
                key, args = f"{key} {args}", ""
            elif key == "step":  # step NAME UPTIME, several
                key, _, args = args.partition(" ")
                key = f"step {key}"
            name, body = key, []
        else:
            body.append(row)
    return out


def parse_report(text: str) -> L2Report:
    s = _sections(text)
    need = ("l2", "interrupts before", "irqs before", "window-begin", "window-end")
    missing = [k for k in (*need, "interrupts after", "irqs after") if k not in s]
    if missing:
        raise _bad(f"no section {', '.join(missing)}")
    head = s["l2"][0].split()
    try:
        kernel, cpus = head[0], int(head[head.index("cpus") + 1])
        begin, end = float(s["window-begin"][0]), float(s["window-end"][0])
    except (ValueError, IndexError):
        raise _bad(f"header {s['l2'][0]!r} or window times unreadable") from None

    def snap(when: str) -> Snapshot:
        return Snapshot(
            parse_proc_interrupts(s[f"interrupts {when}"][1]), parse_sys_irqs(s[f"irqs {when}"][1])
        )

    try:
        steps = tuple((k[5:], float(v[0])) for k, v in s.items() if k.startswith("step "))
    except ValueError:
        raise _bad("a step's time is unreadable") from None
    return L2Report(kernel, cpus, snap("before"), snap("after"), begin, end, steps)

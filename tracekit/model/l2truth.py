"""A Linux L2's own counts as the recording's ground truth, and the window both count in
(issue 15; pure).

The guest side: L2's ``/proc/interrupts`` read twice by ``tk-l2mark``
(guests/linux-l2/tk-l2mark.c), each read between two MMIO marks. Per (INTID, vCPU) the
guest's count is the difference of the two reads (``model/l2report.py``).

The recording side: each mark is a data abort L1's KVM passes to ``io_mem_abort`` with
the mark's IPA as its ``fault_ipa`` (the probe sets capture it): four marks, in order
``begin_before``, ``begin_after``, ``end_before``, ``end_after``. An acknowledgement
between ``begin_after`` and ``end_before`` is certainly in the guest's counts; one in a
bracket (between a snapshot's two marks) may or may not be, since the read of the
counters and the acknowledgement raced; one outside both is certainly not. So, per
(INTID, vCPU), the guest's count ``g`` and the recording's acknowledgements inside
(``inner``) and in the brackets (``bracketed``) must satisfy
``inner <= g <= inner + bracketed``: equality when nothing fell in a bracket, and every
other difference named.

MSIs: the guest knows an MSI by the (DeviceID, EventID) the ITS translates
(``l2report.py``), the recording by the LPI the translation gave; the join is the
recording's own: each ``source_msi`` probe reads the MSI's DeviceID and EventID, and the
queue that follows on the same CPU carries the LPI. That join only pairs the two counts;
a chain's class never comes from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tracekit.errors import GroundTruthError
from tracekit.model.events import RawEvent
from tracekit.model.ground_truth import GroundTruth, InterruptCount
from tracekit.model.l2report import L2Report
from tracekit.model.vocabulary import Role, Value

__all__ = [
    "MARK_IPA",
    "MARK_NAMES",
    "IntidCheck",
    "Window",
    "check_window",
    "ground_truth_of",
    "msi_routes",
    "resolve_msis",
    "window_of",
]

#: The IPA tk-l2mark stores to (its MARK_IPA) and the marks' offsets from it.
MARK_IPA = 0x0B00_0000
MARK_NAMES = {0: "begin_before", 8: "begin_after", 16: "end_before", 24: "end_after"}
#: The guest's interrupt kinds as the mission's classes (the ground truth's side only).
_KIND_CLASS = {"ppi": "hardware", "spi": "virtual", "sgi": "ipi", "lpi": "msi"}
_IO_MEM_ABORT = "io_mem_abort"


@dataclass(frozen=True)
class Window:
    """The four marks' L1 times (ns), in order."""

    begin_before: int
    begin_after: int
    end_before: int
    end_after: int

    def place(self, t: int) -> str:
        """``inner``, ``bracket`` or ``outside`` for an acknowledgement at ``t``."""
        if self.begin_after < t < self.end_before:
            return "inner"
        if self.begin_before <= t <= self.begin_after or self.end_before <= t <= self.end_after:
            return "bracket"
        return "outside"

    def to_json(self) -> list[int]:
        return [self.begin_before, self.begin_after, self.end_before, self.end_after]

    @classmethod
    def from_json(cls, data: object) -> Window:
        if not isinstance(data, list) or len(data) != 4 or not all(type(x) is int for x in data):
            raise GroundTruthError(f"an L2 window should be four integers, got {data!r}")
        return cls(*data)


def window_of(events: Iterable[RawEvent]) -> Window | None:
    """The window from the recording's io_mem_abort events at the mark IPAs.

    None when no mark was seen (the guest never got there: the caller says so). Marks out
    of order, repeated or missing are a GroundTruthError: the window would be a guess.
    """
    seen: dict[str, int] = {}
    for ev in events:
        if ev.name != _IO_MEM_ABORT:
            continue
        ipa = ev.values.get(Value.FAULT_IPA.value)
        if ipa is None or not MARK_IPA <= ipa < MARK_IPA + 32:
            continue
        name = MARK_NAMES.get(ipa - MARK_IPA)
        if name is None or name in seen:
            raise GroundTruthError(
                f"L2's window mark at IPA {ipa:#x} is unexpected or repeated",
                hint="the L2 init marks each bracket once (guests/linux-l2/tk-l2mark.c)",
            )
        seen[name] = ev.t
    if not seen:
        return None
    missing = [n for n in MARK_NAMES.values() if n not in seen]
    if missing:
        raise GroundTruthError(
            f"the recording saw L2's window marks {sorted(seen)} but not {missing}",
            hint="an io_mem_abort without its fault_ipa value: see the merge report",
        )
    times = [seen[n] for n in MARK_NAMES.values()]
    if times != sorted(times):
        raise GroundTruthError(f"L2's window marks are out of order: {times}")
    return Window(*times)


def msi_routes(events: Iterable[RawEvent]) -> dict[tuple[int, int], int]:
    """(DeviceID, EventID) -> LPI, from each source_msi probe and the LPI queued next on
    its CPU. Two LPIs for one MSI is a GroundTruthError (the ITS maps each to one)."""
    open_msi: dict[int, tuple[int, int]] = {}
    routes: dict[tuple[int, int], int] = {}
    source_msi, queue = Role.SOURCE_MSI.value, Role.QUEUE.value
    devid_key, eventid_key = Value.DEVID.value, Value.EVENTID.value
    intid_key = Value.INTID.value
    for ev in events:
        if ev.role == source_msi:
            devid, eventid = ev.values.get(devid_key), ev.values.get(eventid_key)
            if devid is not None and eventid is not None:
                open_msi[ev.cpu] = (devid, eventid)
        elif ev.role == queue and ev.cpu in open_msi:
            intid = ev.values.get(intid_key)
            if intid is None or intid < 8192:
                continue
            key = open_msi.pop(ev.cpu)
            if routes.setdefault(key, intid) != intid:
                raise GroundTruthError(
                    f"MSI (DeviceID {key[0]}, EventID {key[1]}) was queued as LPI "
                    f"{routes[key]} and as LPI {intid}"
                )
    return routes


def ground_truth_of(report: L2Report, scenario: str) -> GroundTruth:
    """L2's window counts as a GroundTruth: one entry per (source, CPU) it counted.

    An MSI's INTID is -1 until :func:`resolve_msis` joins it to its LPI. ``l1_ns`` (the
    VMM's L1 clock over its scenario) is here L2's own clock over the window: what
    ``bench`` compares traced and untraced (guest dilation)."""
    interrupts = []
    for src in report.sources():
        cls = _KIND_CLASS.get(src.kind)
        if cls is None:
            continue
        for cpu, n in enumerate(src.delta):
            if n <= 0:
                continue
            interrupts.append(
                InterruptCount(
                    cls=cls,
                    intid=src.intid if src.intid is not None else -1,
                    vcpu=cpu,
                    source=src.name,
                    sent=n,
                    acked=n,
                    msi=src.msi,
                )
            )
    return GroundTruth(
        scenario=scenario,
        vcpus=report.cpus,
        count=1,
        ok=True,
        errors=(),
        interrupts=tuple(interrupts),
        exceptions=(),
        spurious=0,
        l1_ns=round((report.window_end_s - report.window_begin_s) * 1e9),
        l2_ticks={},
    )


def resolve_msis(gt: GroundTruth, routes: Mapping[tuple[int, int], int]) -> GroundTruth:
    """The guest's MSIs with the LPI the recording saw their translation give (INTID -1
    where it saw none: the check then names them)."""
    out = []
    for irq in gt.interrupts:
        lpi = routes.get(irq.msi) if irq.msi is not None and irq.intid == -1 else None
        out.append(irq if lpi is None else dataclasses.replace(irq, intid=lpi))
    return dataclasses.replace(gt, interrupts=tuple(out))


@dataclass(frozen=True)
class IntidCheck:
    """One (INTID, vCPU): the guest's count against the recording's acknowledgements."""

    intid: int
    vcpu: int
    cls: str
    name: str
    guest: int
    inner: int
    bracketed: int

    @property
    def ok(self) -> bool:
        return self.intid >= 0 and self.inner <= self.guest <= self.inner + self.bracketed

    @property
    def exact(self) -> bool:
        return self.intid >= 0 and self.bracketed == 0 and self.inner == self.guest

    def describe(self) -> str:
        what = f"INTID {self.intid}" if self.intid >= 0 else "an MSI never translated"
        return (
            f"{self.name} ({what}) on vCPU{self.vcpu}: the guest counted {self.guest}, "
            f"the recording saw {self.inner} acknowledgements in the window"
            + (f" and {self.bracketed} in its brackets" if self.bracketed else "")
        )


def check_window(
    gt: GroundTruth, window: Window, acks: Sequence[tuple[int, int, int]]
) -> list[IntidCheck]:
    """Per (INTID, vCPU) the guest counted or the recording acknowledged inside the
    window: both counts. ``acks`` are (t, INTID, vCPU) of every acknowledgement."""
    inner: dict[tuple[int, int], int] = {}
    bracketed: dict[tuple[int, int], int] = {}
    for t, intid, vcpu in acks:
        where = window.place(t)
        if where == "inner":
            inner[(intid, vcpu)] = inner.get((intid, vcpu), 0) + 1
        elif where == "bracket":
            bracketed[(intid, vcpu)] = bracketed.get((intid, vcpu), 0) + 1
    checks: list[IntidCheck] = []
    seen: set[tuple[int, int]] = set()
    for irq in gt.interrupts:
        key = (irq.intid, irq.vcpu)
        seen.add(key)
        checks.append(
            IntidCheck(
                irq.intid,
                irq.vcpu,
                irq.cls,
                irq.source,
                irq.acked,
                inner.get(key, 0),
                bracketed.get(key, 0),
            )
        )
    for key in sorted(set(inner) - seen):
        intid, vcpu = key
        checks.append(IntidCheck(intid, vcpu, "", "not counted by the guest", 0, inner[key], 0))
    return checks

"""The L2 workload's own count of what it sent and acknowledged (pure parsing).

The VMM (``guests/vmm``) prints one ``TRACEKIT-GROUND-TRUTH {json}`` line at the end of a
scenario. Both sides count: the sender (VMM for irqfd/irqline, payload for timer/SGI) and
the receiver (the payload's IRQ handler, per vCPU and INTID). Every claim tracekit makes
about interrupts is checked against these numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracekit.errors import GroundTruthError
from tracekit.model.vocabulary import CLASSES

#: The classes ``per_class`` lists even at zero: those recordings have always listed.
_ALWAYS_LISTED = CLASSES[:3]

__all__ = [
    "GROUND_TRUTH_PREFIX",
    "ExceptionCount",
    "GroundTruth",
    "InterruptCount",
    "parse_ground_truth_line",
]

GROUND_TRUTH_PREFIX = "TRACEKIT-GROUND-TRUTH "


@dataclass(frozen=True)
class InterruptCount:
    """One interrupt source as the workload counted it."""

    cls: str
    intid: int
    vcpu: int
    source: str
    sent: int
    acked: int
    from_vcpu: int | None = None
    #: A Linux L2's MSI: the (DeviceID, EventID) the ITS translates (model/l2truth.py).
    msi: tuple[int, int] | None = None


@dataclass(frozen=True)
class ExceptionCount:
    kind: str
    vcpu: int
    issued: int
    observed: int


@dataclass(frozen=True)
class GroundTruth:
    scenario: str
    vcpus: int
    count: int
    ok: bool
    errors: tuple[str, ...]
    interrupts: tuple[InterruptCount, ...]
    exceptions: tuple[ExceptionCount, ...]
    spurious: int
    l1_ns: int
    l2_ticks: Mapping[str, int]

    def per_class(self) -> dict[str, int]:
        """Acknowledged interrupts per class: the first three classes always (zero when
        unused), any other (``msi``, added later) only when it occurs, so that a meta.json
        written before it reads and writes back byte for byte."""
        totals = dict.fromkeys(_ALWAYS_LISTED, 0)
        for irq in self.interrupts:
            totals[irq.cls] = totals.get(irq.cls, 0) + irq.acked
        return totals

    def intids(self, cls: str | None = None) -> set[int]:
        return {i.intid for i in self.interrupts if cls is None or i.cls == cls}

    def disagreements(self) -> list[str]:
        """Where sender and receiver (or issuer and observer) do not agree."""
        problems = [
            f"{i.cls} INTID {i.intid} on vCPU{i.vcpu}: sent {i.sent}, acknowledged {i.acked}"
            for i in self.interrupts
            if i.sent != i.acked
        ]
        problems += [
            f"{e.kind} on vCPU{e.vcpu}: issued {e.issued}, observed {e.observed}"
            for e in self.exceptions
            if e.issued != e.observed
        ]
        return problems

    def check(self) -> None:
        """Raise GroundTruthError when the workload reported a problem."""
        problems = list(self.errors) + self.disagreements()
        if problems or not self.ok:
            raise GroundTruthError(
                f"scenario {self.scenario!r}: the workload's counters disagree: "
                + "; ".join(problems or ["ok=false"])
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "vcpus": self.vcpus,
            "count": self.count,
            "ok": self.ok,
            "errors": list(self.errors),
            "per_class": self.per_class(),
            "interrupts": [
                {
                    "class": i.cls,
                    "intid": i.intid,
                    "vcpu": i.vcpu,
                    "source": i.source,
                    "sent": i.sent,
                    "acked": i.acked,
                }
                | ({"from_vcpu": i.from_vcpu} if i.from_vcpu is not None else {})
                | ({"msi": list(i.msi)} if i.msi is not None else {})
                for i in self.interrupts
            ],
            "exceptions": [
                {"kind": e.kind, "vcpu": e.vcpu, "issued": e.issued, "observed": e.observed}
                for e in self.exceptions
            ],
            "spurious": self.spurious,
            "l1_ns": self.l1_ns,
            "l2_ticks": dict(self.l2_ticks),
        }

    @classmethod
    def from_json(cls, data: Any) -> GroundTruth:
        """From :meth:`to_json`'s object (a console line's JSON, or meta.json's
        ``ground_truth``); ``per_class`` is not read: it follows from the interrupts."""
        if not isinstance(data, dict):
            raise GroundTruthError("ground-truth JSON should be an object")
        try:
            interrupts = tuple(
                InterruptCount(
                    cls=str(i["class"]),
                    intid=_int(i, "intid", "interrupt"),
                    vcpu=_int(i, "vcpu", "interrupt"),
                    source=str(i.get("source", "")),
                    sent=_int(i, "sent", "interrupt"),
                    acked=_int(i, "acked", "interrupt"),
                    from_vcpu=i.get("from_vcpu"),
                    msi=_msi(i.get("msi")),
                )
                for i in data.get("interrupts", [])
            )
            exceptions = tuple(
                ExceptionCount(
                    kind=str(e["kind"]),
                    vcpu=_int(e, "vcpu", "exception"),
                    issued=_int(e, "issued", "exception"),
                    observed=_int(e, "observed", "exception"),
                )
                for e in data.get("exceptions", [])
            )
            return cls(
                scenario=str(data["scenario"]),
                vcpus=_int(data, "vcpus", "line"),
                count=_int(data, "count", "line"),
                ok=bool(data.get("ok", False)),
                errors=tuple(str(e) for e in data.get("errors", [])),
                interrupts=interrupts,
                exceptions=exceptions,
                spurious=int(data.get("spurious", 0)),
                l1_ns=int(data.get("l1_ns", 0)),
                l2_ticks={str(k): int(v) for k, v in dict(data.get("l2_ticks", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GroundTruthError(f"ground-truth JSON lacks or mistypes {exc}") from None


def _msi(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2 or not all(type(x) is int for x in v):
        raise GroundTruthError(f"ground truth interrupt: 'msi' should be two integers, got {v!r}")
    return (v[0], v[1])


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise GroundTruthError(f"ground truth {where}: {key!r} should be an integer, got {v!r}")
    return v


def parse_ground_truth_line(line: str) -> GroundTruth:
    """Parse one ``TRACEKIT-GROUND-TRUTH {json}`` console line."""
    text = line.strip()
    if not text.startswith(GROUND_TRUTH_PREFIX.strip()):
        raise GroundTruthError(f"not a ground-truth line: {text[:60]!r}")
    payload = text[len(GROUND_TRUTH_PREFIX.strip()) :].strip()
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise GroundTruthError(
            f"ground-truth line is not valid JSON ({exc.msg})",
            hint="the L1 console may be garbled; see console.log",
        ) from None
    return GroundTruth.from_json(data)
